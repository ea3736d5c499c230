"""The optional Ray extra (`pip install 'bizra-batch[ray]'`): `run --ray`.

- `runner`: the same job as `batching.run`, its rows through a Ray Data pipeline
  to engine replicas (`run_on_ray`, `RayOptions`).
- `source`: reads the input file as a Ray Data source, rows as Arrow columns.
- `replica`: the actor that keeps one engine fed across the batches it is given.
- `results`: the replicas' results as Arrow columns, back to `Result`s.

Nothing is imported here, and `runner` imports Ray only when a run starts, so
`import batching` works where the extra is not installed. (Inside this package
`import ray` is the Ray library: imports are absolute.)
"""
