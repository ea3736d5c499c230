"""`bizra-batch bench`: what batching gains, measured on one started engine.

- `sweep`: the prompts at a sweep of static batch sizes and through `run`'s
  pipeline, side by side (`run_bench`), and the prompt helpers both sides share.
- `vs_generate`: `bench --vs-generate`, the same rows through one raw
  `LLM.generate` call and through the pipeline.
- `output`: what `bench` shows: a table, a JSON file, a plot (matplotlib).

A measuring tool, not part of a run: nothing in the rest of `batching` imports it,
and nothing is imported here.
"""
