"""Training-speed benchmarks of `superloop_cell` (see benchmarks/README.md).

Keras reads its backend once, when it is first imported, so an entry point
calls `benchmarks.backend.select(name)` before it imports any module here
that imports Keras (all but `backend` and the command-line modules):

    from benchmarks import backend
    backend.select("jax")
    from benchmarks import measure, models

Modules:
    backend        choosing the Keras backend, before Keras is imported
    baselines      the comparison cells (straightforward composite, no-op)
    models         model builders, the variant registry, analytic FLOPs
    measure        timing, trace and compile counting, peak memory, GEMM
    report         tables, results.json, the plot
    versions       the package from another git revision, in this process
    datasets       mixed-length data (length-sorted padded batches)
    sweep          the sweep's plans and sections
    run            the sweep's command line (`python -m benchmarks.run`)
    ab             interleaved A/B comparisons (`python -m benchmarks.ab`)
    mixed_lengths  end-to-end training on mixed lengths
    first_step, fused_threshold   two focused measurements
"""
