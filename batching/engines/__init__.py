"""The engine backends behind `batching.engine.Engine`, each in its own module.

- `vllm`: the vLLM engine, the only module that imports vllm (`vllm_setup` prepares
  the process before it does, without importing it).
- `openai`: an OpenAI-compatible server over HTTP (`openai_wire`: its request and
  response bodies).
- `sim`: a model-free engine that keeps a GPU's pace (`--engine sim`).
- `choice`: which of them a run gets (`--engine`), as an `EngineFactory`.

The fake engine for tests is `batching.testing.FakeEngine`. Nothing is imported
here: each backend loads its heavy dependencies (vLLM and torch, httpx) only when
its module is imported, so `import batching.engines` stays cheap.
"""
