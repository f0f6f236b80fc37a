"""The first training step, with and without the optimizer built beforehand.

Keras' first `train_on_batch` (or first batch of `fit`) traces the train
step twice when the optimizer's variables do not exist yet: the first trace
creates them, and `tf.function` traces again so that no variable is created
inside the function. Calling `model.optimizer.build(model.trainable_variables)`
before the first step leaves one trace. This script times both for the
reference model of the suite (`looped`) and its `straightforward` baseline:
a fresh model each time, build + trace + one step, traces counted.

    python -m benchmarks.first_step        # or: python benchmarks/first_step.py
    python -m benchmarks.first_step --variants looped --depth 4 --steps 16
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file: python benchmarks/first_step.py
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

from benchmarks import backend  # noqa: E402  (imports no Keras)


def first_step(variant, depth, steps, batch, prebuild):
    """Seconds for build + trace + one step, and the number of traces."""
    import numpy as np

    from benchmarks import measure, models

    x, y = measure.random_batch(np.random.default_rng(measure.SEED), batch,
                                steps)
    _, counts, seconds = measure.first_step(
        models.VARIANTS[variant].build, depth, steps, x, y,
        measure.FIRST_STEP_LIMIT_S, prebuild=prebuild,
    )
    return seconds, counts["traces"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=backend.BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else "
                        "tensorflow)")
    parser.add_argument("--variants", default="looped,straightforward")
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64, help="T")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    backend.select(args.backend)
    import keras  # after select

    from benchmarks import models

    variants = args.variants.split(",")
    for variant in variants:
        if variant not in models.VARIANTS:
            parser.error(f"--variants: unknown variant {variant!r}; "
                         f"choose from {', '.join(models.VARIANTS)}")
    rows = []
    for variant in variants:
        default_s, default_traces = first_step(
            variant, args.depth, args.steps, args.batch, prebuild=False
        )
        built_s, built_traces = first_step(
            variant, args.depth, args.steps, args.batch, prebuild=True
        )
        rows.append((variant, default_s, default_traces, built_s,
                     built_traces))
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"{os.cpu_count()} CPUs; depth {args.depth}, T {args.steps}, "
          f"batch {args.batch}; first step = build + trace + one step")
    print("variant          default_s  traces  prebuilt_s  traces  "
          "prebuilt/default")
    for variant, default_s, default_traces, built_s, built_traces in rows:
        print(f"{variant:15s}  {default_s:9.2f}  {default_traces:6d}  "
              f"{built_s:10.2f}  {built_traces:6d}  "
              f"{built_s / default_s:16.2f}")
    if len(rows) > 1:
        base = rows[-1]
        for row in rows[:-1]:
            print(f"{row[0]} / {base[0]}: default {row[1] / base[1]:.2f}, "
                  f"prebuilt {row[3] / base[3]:.2f}")


if __name__ == "__main__":
    main()
