"""Training-speed benchmarks of `superloop_cell` (see benchmarks/README.md).

Keras reads its backend once, when it is first imported, so an entry point
calls `benchmarks.backend.select(name)` before it imports a module that
imports Keras (`models`, `baselines`, `datasets`).

Commands: `run` (the reference table), `ab` (two settings or revisions,
each side in its own process), `mixed_lengths` (end to end on mixed
lengths), `torch_step` (torch: eager against compiled steps).
"""
