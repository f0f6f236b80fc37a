"""Training-speed benchmarks of `SuperloopCell` against comparison cells.

    python -m benchmarks.run [--quick | --reference] [--out DIR]
                             [--backend tensorflow|jax] [--rounds N]
                             [--variants looped,straightforward,...]

(`python benchmarks/run.py ...` works too.) Every model is `Input((T, 2)) →
keras.layers.RNN(cell, return_sequences=True) → Dense(1)`, trained with
RMSprop on MSE by `train_on_batch` on random NumPy data. The variants and the
columns of the tables are described in `benchmarks/README.md` and in
`benchmarks.models.VARIANTS`.

Sections, in order: machine facts; a check that the straightforward baseline
computes the same function as the project cell; a large-GEMM reference;
first-step and interleaved steady step times over a T sweep and a depth
sweep; new sequence lengths (`train_on_batch`, and `model.fit` on a padded
`tf.data` pipeline on TensorFlow); peak RSS against T, one subprocess per
point. Results go to `OUT/results.json` (rewritten after every section) and
`OUT/benchmarks.png`.
"""

import argparse
import json
import os
import sys

if __package__ in (None, ""):  # run as a file: python benchmarks/run.py
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

from benchmarks import backend  # noqa: E402  (imports no Keras)

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Training-speed benchmarks of SuperloopCell "
        "(see benchmarks/README.md)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sweep, under 5 minutes"
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help="only the reference configuration (depth 32; T 16 and 64; "
        "batch 1024 at T 64), about 8 minutes",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="output folder (default: "
        "benchmarks/out/)"
    )
    parser.add_argument(
        "--backend",
        choices=backend.BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument(
        "--variants",
        help="comma-separated names from benchmarks.models.VARIANTS "
        "(default: every variant but gru_layers)",
    )
    parser.add_argument(
        "--rounds", type=int, help="steady rounds per point (default: by plan)"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if sum((args.quick, args.reference, args.tiny)) > 1:
        parser.error(
            "--quick, --reference: choose one plan, got more than one."
        )
    if args.rounds is not None and args.rounds < 1:
        parser.error(
            f"--rounds: expected a positive integer, got {args.rounds}."
        )
    return parser, args


def checked_variants(parser, text, known, default):
    """The names of `--variants`, each one of `known`; else a usage error."""
    if text is None:
        return list(default)
    variants = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in variants if v not in known]
    if unknown or not variants:
        parser.error(
            f"--variants: expected names from {', '.join(known)}, got "
            f"{text!r}."
        )
    return variants


def main(argv=None):
    parser, args = parse_args(argv)
    backend.select(args.backend)
    # After select: Keras is imported here.
    from benchmarks import measure, models, sweep

    if args.memory_child:
        measure.memory_child(json.loads(args.memory_child))
        return
    variants = checked_variants(
        parser, args.variants, models.VARIANTS, models.DEFAULT_VARIANTS
    )
    plan = sweep.PLANS[
        "tiny" if args.tiny
        else "quick" if args.quick
        else "reference" if args.reference
        else "full"
    ]
    if args.rounds:
        plan.rounds = args.rounds
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "results.json")
    sweep.Sweep(plan, variants, json_path).run(args.out)


if __name__ == "__main__":
    main()
