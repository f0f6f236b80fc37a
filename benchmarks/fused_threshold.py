"""Fused vs unfused SGU runs by depth: where `fused="auto"` draws its line.

Builds the reference model (`SGUCell(16)` layers + `RegisterMemory(registers=4, width=8)`,
input width 2, `RNN(return_sequences=True)` + `Dense(1)`, RMSprop, MSE) at
each depth with `fused=True` and `fused=False`, times the first
`train_on_batch` (build + trace + step) and the median of `--rounds`
steady steps, fused and unfused interleaved so that drift hits both alike.

    python -m benchmarks.fused_threshold        # depths 4, 8, 16
    python benchmarks/fused_threshold.py --depths 2,4,8,12,16 --rounds 9

(For one depth, `python -m benchmarks.ab --a fused=True --b fused=False
--depth 16` gives the ratio's spread over rounds.)
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a file
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

from benchmarks import backend  # noqa: E402  (imports no Keras)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=backend.BACKENDS,
                        help="Keras backend (default: $KERAS_BACKEND, else "
                        "tensorflow)")
    parser.add_argument("--depths", default="4,8,16",
                        help="comma-separated stack depths")
    parser.add_argument("--steps", type=int, default=64, help="T")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    backend.select(args.backend)
    import keras  # after select
    import numpy as np

    from benchmarks import measure, models

    depths = [int(d) for d in args.depths.split(",")]
    x, y = measure.random_batch(np.random.default_rng(0), args.batch,
                                args.steps)
    built, first = {}, {}
    for depth in depths:
        for fused in (True, False):
            keras.utils.set_random_seed(0)
            model = models.project_model(depth, steps=args.steps, fused=fused)
            first[depth, fused] = measure.timed_step(model, x, y)
            model.train_on_batch(x, y)  # warm-up
            built[depth, fused] = model
    times = {key: [] for key in built}
    for _ in range(args.rounds):
        for key, model in built.items():
            times[key].append(measure.timed_step(model, x, y))
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
