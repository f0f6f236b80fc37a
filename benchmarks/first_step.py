"""The first training step, with and without the optimizer built beforehand.

Keras' first `train_on_batch` (or first batch of `fit`) traces the train
step twice when the optimizer's variables do not exist yet: the first trace
creates them, and `tf.function` traces again so that no variable is created
inside the function. Calling `model.optimizer.build(model.trainable_variables)`
before the first step leaves one trace. This script times both for the
reference model of `run.py` (`looped`) and its `straightforward` baseline:
a fresh model each time, build + trace + one step, traces counted.

    python benchmarks/first_step.py
    python benchmarks/first_step.py --variants looped --depth 4 --steps 16
"""

import argparse
import os

# First: run.py sets the Keras backend (`--backend`) before Keras loads, and
# holds the suite's reference model.
import run

import keras  # noqa: E402
import numpy as np  # noqa: E402


def first_step(variant, depth, steps, batch, prebuild):
    """Seconds for build + trace + one step, and the number of traces."""
    x, y = run.random_batch(np.random.default_rng(run.SEED), batch, steps)
    _, counts, seconds = run.first_step(
        variant, depth, steps, x, y, run.FIRST_STEP_LIMIT_S, prebuild=prebuild
    )
    return seconds, counts["traces"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=run.BACKENDS,
                        help="Keras backend (read by run.py at import)")
    parser.add_argument("--variants", default="looped,straightforward")
    parser.add_argument("--depth", type=int, default=run.REFERENCE_DEPTH)
    parser.add_argument("--steps", type=int, default=64, help="T")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    variants = args.variants.split(",")
    for variant in variants:
        if variant not in run.VARIANTS:
            parser.error(f"--variants: unknown variant {variant!r}; "
                         f"choose from {', '.join(run.VARIANTS)}")
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
