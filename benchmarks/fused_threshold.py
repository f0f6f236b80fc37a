"""Fused vs unfused SGU runs by depth: where `fused="auto"` draws its line.

Builds the reference model (`SGUCell(16)` layers + `RegisterMemory(4, 8)`,
input width 2, `RNN(return_sequences=True)` + `Dense(1)`, RMSprop, MSE) at
each depth with `fused=True` and `fused=False`, times the first
`train_on_batch` (build + trace + step) and the median of `--rounds`
steady steps, fused and unfused interleaved so that drift hits both alike.

    python benchmarks/fused_threshold.py                 # depths 4, 8, 16
    python benchmarks/fused_threshold.py --depths 2,4,8,12,16 --rounds 9
"""

import argparse
import os
import time

# First: run.py sets the Keras backend (`--backend`) before Keras loads, and
# holds the suite's reference model.
import run

import keras  # noqa: E402
import numpy as np  # noqa: E402


def build(depth, fused, steps):
    cell = run._project_cell(depth, run.UNITS, fused=fused)
    return run._compiled_sequence_model(cell, False, steps=steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=run.BACKENDS,
                        help="Keras backend (read by run.py at import)")
    parser.add_argument("--depths", default="4,8,16",
                        help="comma-separated stack depths")
    parser.add_argument("--steps", type=int, default=64, help="T")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, args.steps, run.INPUT_WIDTH))
    x = x.astype("float32")
    y = rng.normal(size=(args.batch, args.steps, 1)).astype("float32")
    models, first = {}, {}
    for depth in depths:
        for fused in (True, False):
            keras.utils.set_random_seed(0)
            model = build(depth, fused, args.steps)
            start = time.perf_counter()
            model.train_on_batch(x, y)
            first[depth, fused] = time.perf_counter() - start
            model.train_on_batch(x, y)  # warm-up
            models[depth, fused] = model
    times = {key: [] for key in models}
    for _ in range(args.rounds):
        for key, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[key].append(time.perf_counter() - start)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}, "
          f"{os.cpu_count()} CPUs; T {args.steps}, batch {args.batch}, "
          f"median of {args.rounds} interleaved steady steps")
    print("depth  fused_first_s  fused_step_ms  unfused_first_s  "
          "unfused_step_ms  steady_fused/unfused")
    for depth in depths:
        fused_ms = 1000 * np.median(times[depth, True])
        unfused_ms = 1000 * np.median(times[depth, False])
        print(f"{depth:5d}  {first[depth, True]:13.2f}  {fused_ms:13.1f}  "
              f"{first[depth, False]:15.2f}  {unfused_ms:15.1f}  "
              f"{fused_ms / unfused_ms:20.2f}")


if __name__ == "__main__":
    main()
