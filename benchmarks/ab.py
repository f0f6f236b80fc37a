"""A/B: two settings, or two versions of the code, interleaved in one process.

    python -m benchmarks.ab --a "fused=True" --b "fused=False" --rounds 7
    python -m benchmarks.ab --a-rev fe77dc4 --rounds 5 --backend jax

Both sides train the reference model (`SuperloopCell` of `--depth`
`SGUCell(16)` + `RegisterMemory(registers=4, width=8)`, `RNN` → `Dense(1)`, RMSprop, MSE,
`train_on_batch`). `--a`/`--b` are comma-separated `key=value` settings:
`jit_compile`, `unroll` and any `SuperloopCell` argument (`fused=auto`).
`--a-rev`/`--b-rev` take the package from a git revision instead of the
working tree (`benchmarks.versions`), in the same process.

Each side first gets a model that is warmed up and kept for the steady
steps. Then, in every round, A and B take turns (A first in even rounds, B
first in odd ones): each builds a fresh model and times its first step
(build + compile + first `train_on_batch`: trace, and on XLA compile), then
each times `--steps-per-round` steady steps on its kept model (the round's
median). The report gives, for the steady step and the first step, each
side's median and the median over rounds of the per-round ratio B/A with its
spread (min–max and interquartile range): a claim that B is faster is
repeatable when the whole spread lies below 1.
"""

import argparse
import ast
import gc
import os
import statistics
import sys
import time

from benchmarks import backend  # imports no Keras

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
WARMUP_STEPS = 2
# Settings that go to the model, not to `SuperloopCell`.
MODEL_SETTINGS = ("jit_compile", "unroll")


def parse_settings(text):
    """`"fused=True,jit_compile=False"` → `{"fused": True, ...}`.

    Values are Python literals where they parse as one (`True`, `16`,
    `'auto'`), else strings (`fused=auto`).

    Raises:
        ValueError: an item is not `key=value` with an identifier as key.
    """
    settings = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(
                f"Received an invalid setting: expected key=value, got "
                f"{item!r}."
            )
        try:
            settings[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            settings[key] = value.strip()
    return settings


def ratio_statistics(a_times, b_times):
    """Per-round ratios B/A and their summary.

    Args:
        a_times, b_times: one time per round for each side, same length.

    Returns:
        dict: `ratios` (per round), `median_ratio`, `min_ratio`,
        `max_ratio`, `q1_ratio`, `q3_ratio` (quartiles; equal to the median
        with one round), `median_a`, `median_b`, `rounds`.
    """
    if len(a_times) != len(b_times) or not a_times:
        raise ValueError(
            "Received invalid timings: expected one time per round for each "
            f"side, got {len(a_times)} for A and {len(b_times)} for B."
        )
    ratios = [b / a for a, b in zip(a_times, b_times)]
    median = statistics.median(ratios)
    if len(ratios) > 1:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    else:
        q1 = q3 = median
    return {
        "ratios": ratios,
        "median_ratio": median,
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "q1_ratio": q1,
        "q3_ratio": q3,
        "median_a": statistics.median(a_times),
        "median_b": statistics.median(b_times),
        "rounds": len(ratios),
    }


def round_order(round_index, sides):
    """A first in even rounds, B first in odd ones."""
    return sides if round_index % 2 == 0 else sides[::-1]


def describe(statistics_, unit, scale):
    s = statistics_
    return (
        f"A {s['median_a'] * scale:.1f} {unit}, B {s['median_b'] * scale:.1f} "
        f"{unit}; B/A median {s['median_ratio']:.3f} (min–max "
        f"{s['min_ratio']:.3f}–{s['max_ratio']:.3f}, IQR "
        f"{s['q1_ratio']:.3f}–{s['q3_ratio']:.3f}, {s['rounds']} rounds)"
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Interleaved A/B of two settings or two revisions of "
        "superloop_cell (see benchmarks/README.md)."
    )
    parser.add_argument("--a", default="", help="settings of A: key=value,...")
    parser.add_argument("--b", default="", help="settings of B: key=value,...")
    parser.add_argument(
        "--a-rev", help="git revision of the package for A (default: the "
        "working tree)"
    )
    parser.add_argument(
        "--b-rev", help="git revision of the package for B (default: the "
        "working tree)"
    )
    parser.add_argument("--backend", choices=backend.BACKENDS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64, help="T")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--steps-per-round", type=int, default=3,
        help="steady steps per side per round (their median counts)",
    )
    parser.add_argument(
        "--no-first-step", action="store_true",
        help="steady steps only (no fresh model per round)",
    )
    parser.add_argument(
        "--out", help="JSON file (default: benchmarks/out/ab_BACKEND.json)"
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "depth", "steps", "batch", "steps_per_round"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')}: expected a positive integer, "
                f"got {getattr(args, name)}."
            )
    try:
        args.a_settings = parse_settings(args.a)
        args.b_settings = parse_settings(args.b)
    except ValueError as error:
        parser.error(str(error))
    if args.a_settings == args.b_settings and args.a_rev == args.b_rev:
        parser.error("A and B are the same: give --a/--b or --a-rev/--b-rev.")
    return args


class Side:
    """One side of the comparison: a package version and settings."""

    def __init__(self, name, library, settings, depth, steps):
        self.name = name
        self.library = library
        self.settings = settings
        self.depth = depth
        self.steps = steps
        self.kept = None
        self.first = []  # seconds per round
        self.first_traces = []
        self.steady = []  # the round's median, seconds

    def label(self):
        settings = ",".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.library.label}" + (f" [{settings}]" if settings else "")

    def build(self):
        import keras

        from benchmarks import measure, models

        model_kwargs = {k: v for k, v in self.settings.items()
                        if k in MODEL_SETTINGS}
        cell_kwargs = {k: v for k, v in self.settings.items()
                       if k not in MODEL_SETTINGS}
        steps = self.steps if model_kwargs.get("unroll") else None
        keras.utils.set_random_seed(measure.SEED)
        return models.project_model(
            self.depth, steps=steps, library=self.library.package,
            **model_kwargs, **cell_kwargs,
        )

    def first_step(self, x, y):
        """Seconds and traces of build + compile + first step, fresh model."""
        from benchmarks import measure

        with self.library.active():
            start = time.perf_counter()
            model = self.build()
            counts = measure.count_traces(model)
            model.train_on_batch(x, y)
            seconds = time.perf_counter() - start
        del model
        gc.collect()
        return seconds, counts["traces"]

    def keep_warm(self, x, y):
        with self.library.active():
            self.kept = self.build()
            for _ in range(1 + WARMUP_STEPS):
                self.kept.train_on_batch(x, y)

    def steady_step(self, x, y, repeats):
        from benchmarks import measure

        with self.library.active():
            times = [measure.timed_step(self.kept, x, y)
                     for _ in range(repeats)]
        return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    backend.select(args.backend)
    # After select: Keras is imported here.
    import numpy as np

    from benchmarks import measure, report, versions

    def library(revision):
        if revision is None:
            return versions.current()
        return versions.from_revision(revision)

    sides = [
        Side("A", library(args.a_rev), args.a_settings, args.depth, args.steps),
        Side("B", library(args.b_rev), args.b_settings, args.depth, args.steps),
    ]
    facts = measure.machine_facts()
    measure.log(report.machine_line(facts))
    for side in sides:
        measure.log(f"{side.name}: {side.label()}")
    measure.log(
        f"depth {args.depth}, T {args.steps}, batch {args.batch}, "
        f"{args.rounds} rounds, {args.steps_per_round} steady steps per side "
        "per round"
    )
    started = time.perf_counter()
    x, y = measure.random_batch(
        np.random.default_rng(measure.SEED), args.batch, args.steps
    )
    for side in sides:
        side.keep_warm(x, y)
    for round_index in range(args.rounds):
        order = round_order(round_index, sides)
        line = [f"round {round_index + 1}:"]
        if not args.no_first_step:
            for side in order:
                seconds, traces = side.first_step(x, y)
                side.first.append(seconds)
                side.first_traces.append(traces)
                line.append(f"{side.name} first {seconds:.2f} s")
        for side in order:
            seconds = side.steady_step(x, y, args.steps_per_round)
            side.steady.append(seconds)
            line.append(f"{side.name} steady {seconds * 1e3:.1f} ms")
        measure.log("  ".join(line))

    a, b = sides
    results = {
        "machine": facts,
        "config": {
            "a": a.label(), "b": b.label(),
            "a_settings": a.settings, "b_settings": b.settings,
            "a_rev": args.a_rev, "b_rev": args.b_rev,
            "depth": args.depth, "steps": args.steps, "batch": args.batch,
            "rounds": args.rounds, "steps_per_round": args.steps_per_round,
            "command": " ".join(
                ["python -m benchmarks.ab"]
                + list(sys.argv[1:] if argv is None else argv)
            ),
        },
        "steady": ratio_statistics(a.steady, b.steady),
    }
    if not args.no_first_step:
        results["first_step"] = ratio_statistics(a.first, b.first)
        results["first_step"]["traces_a"] = a.first_traces
        results["first_step"]["traces_b"] = b.first_traces
    results["machine"]["load_average_at_end"] = measure.load_average()
    results["elapsed_s"] = time.perf_counter() - started

    measure.log("")
    measure.log(report.machine_line(results["machine"]))
    warning = measure.busy_note(facts)
    if warning:
        measure.log(warning)
    measure.log(f"A = {a.label()}; B = {b.label()}")
    measure.log("steady step: " + describe(results["steady"], "ms", 1e3))
    if "first_step" in results:
        measure.log("first step:  " + describe(results["first_step"], "s", 1))
    out = args.out or os.path.join(DEFAULT_OUT, f"ab_{backend.active()}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    report.write_json(results, out)
    measure.log(f"results: {out} ({results['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
