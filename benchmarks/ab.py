"""A/B: two settings, or two revisions of the code, interleaved.

    python -m benchmarks.ab --a "layer_loop=False" --b "layer_loop=True"
    python -m benchmarks.ab --a-rev HEAD~3 --b-rev HEAD --backend jax

Both sides train the reference model (`SuperloopCell` of `--depth`
`SGUCell(16)` + `RegisterMemory(registers=4, width=8)`, `RNN` → `Dense(1)`,
RMSprop, MSE, `train_on_batch`). `--a`/`--b` are comma-separated
`key=value` settings: `jit_compile` and any `SuperloopCell` argument
(`fused=auto`). `--a-rev`/`--b-rev` take `superloop_cell/` from a git
revision (`git archive`, into a temporary folder) instead of the working
tree; the benchmark code is the working tree's.

Each side runs in its own process, started once and kept: it builds a model,
warms it up and keeps it for the steady steps. Then, in every round, the
two processes take turns (A first in even rounds, B first in odd ones): each
builds a fresh model and times its first step (build + compile + first
`train_on_batch`), then each times `--steps-per-round` steady steps on its
kept model (the round's median). Reported, for the steady step and the first
step: each side's median and the median over rounds of the per-round ratio
B/A with its spread (min–max, interquartile range). A claim that B is
faster is repeatable when the whole spread lies below 1.
"""

import argparse
import ast
import atexit
import gc
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

from benchmarks import backend, measure  # import no Keras

WARMUP_STEPS = 2


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
            raise ValueError(f"Received an invalid setting: expected "
                             f"key=value, got {item!r}.")
        try:
            settings[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            settings[key] = value.strip()
    return settings


def ratio_statistics(a_times, b_times):
    """Per-round ratios B/A and their summary.

    Returns:
        dict: `ratios` (per round), `median_ratio`, `min_ratio`,
        `max_ratio`, `q1_ratio`, `q3_ratio` (quartiles; equal to the median
        with one round), `median_a`, `median_b`, `rounds`.
    """
    if len(a_times) != len(b_times) or not a_times:
        raise ValueError(
            "Received invalid timings: expected one time per round for each "
            f"side, got {len(a_times)} for A and {len(b_times)} for B.")
    ratios = [b / a for a, b in zip(a_times, b_times)]
    median = statistics.median(ratios)
    q1 = q3 = median
    if len(ratios) > 1:
        q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"ratios": ratios, "median_ratio": median,
            "min_ratio": min(ratios), "max_ratio": max(ratios),
            "q1_ratio": q1, "q3_ratio": q3,
            "median_a": statistics.median(a_times),
            "median_b": statistics.median(b_times), "rounds": len(ratios)}


def round_order(round_index, sides):
    """A first in even rounds, B first in odd ones."""
    return sides if round_index % 2 == 0 else sides[::-1]


def describe(s, unit, scale):
    return (f"A {s['median_a'] * scale:.1f} {unit}, B "
            f"{s['median_b'] * scale:.1f} {unit}; B/A median "
            f"{s['median_ratio']:.3f} (min–max {s['min_ratio']:.3f}–"
            f"{s['max_ratio']:.3f}, IQR {s['q1_ratio']:.3f}–"
            f"{s['q3_ratio']:.3f}, {s['rounds']} rounds)")


def extract(revision):
    """`superloop_cell/` at git `revision`, in a new temporary folder."""
    archive = subprocess.run(
        ["git", "-C", measure.REPO_ROOT, "archive", "--format=tar", revision,
         "superloop_cell"], capture_output=True, check=False)
    if archive.returncode != 0:
        raise ValueError(
            f"Cannot read superloop_cell/ at git revision {revision!r}: "
            f"{archive.stderr.decode(errors='replace').strip()}")
    folder = tempfile.mkdtemp(prefix=f"superloop_cell_{revision}_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(folder, **extra)
    return folder


class Side:
    """One side: a worker process holding its package, settings and model."""

    def __init__(self, name, revision, settings, args):
        self.name, self.revision, self.settings = name, revision, settings
        self.first, self.first_traces, self.steady = [], [], []
        root = extract(revision) if revision else measure.REPO_ROOT
        spec = {"settings": settings, "depth": args.depth,
                "steps": args.steps, "batch": args.batch}
        # `python -m` puts the working folder first on the module path: the
        # revision's superloop_cell is found before the working tree's.
        self.process = subprocess.Popen(
            measure.child_command("benchmarks.ab", args.backend_name,
                                  ["--worker", json.dumps(spec)]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=root, env=measure.child_env(args.backend_name, root))
        self.package = self.ask("ready")["package"]

    def label(self):
        settings = ",".join(f"{k}={v}" for k, v in self.settings.items())
        return ((self.revision or "working tree")
                + (f" [{settings}]" if settings else ""))

    def ask(self, command):
        """Sends `command` to the worker; its JSON answer."""
        if command != "ready":
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith(measure.RESULT_MARKER):
                answer = json.loads(line[len(measure.RESULT_MARKER):])
                if "error" in answer:
                    raise RuntimeError(f"side {self.name}: {answer['error']}")
                return answer
        raise RuntimeError(f"side {self.name}: the worker exited "
                           f"({self.process.wait()})")

    def close(self):
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait()


def worker(spec):
    """A side's process: answers `first`, `steady N` until stdin closes."""
    import keras
    import numpy as np

    import superloop_cell
    from benchmarks import models

    settings = dict(spec["settings"])
    jit_compile = settings.pop("jit_compile", False)
    x, y = measure.random_batch(np.random.default_rng(measure.SEED),
                                spec["batch"], spec["steps"])

    def build():
        keras.utils.set_random_seed(measure.SEED)
        cell = models.project_cell(spec["depth"], **settings)
        return models.sequence_model(cell, jit_compile)

    try:
        kept = build()
        for _ in range(1 + WARMUP_STEPS):
            kept.train_on_batch(x, y)
    except Exception as error:  # noqa: BLE001  (the parent reports it)
        measure.emit_child_result({"error": measure.error_note(error)})
        return
    measure.emit_child_result({"package": superloop_cell.__file__})
    for command in sys.stdin:
        word, *rest = command.split()
        if word == "first":
            start = time.perf_counter()
            model = build()
            counts = measure.count_traces(model)
            model.train_on_batch(x, y)
            answer = {"seconds": time.perf_counter() - start,
                      "traces": counts["traces"]}
            del model
            gc.collect()
        else:
            kept.train_on_batch(x, y)  # untimed: TensorFlow frees the
            # fresh model's graph lazily, inside the next step
            answer = {"seconds": statistics.median(
                measure.timed_step(kept, x, y) for _ in range(int(rest[0])))}
        measure.emit_child_result(answer)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Interleaved A/B of two settings or two revisions of "
        "superloop_cell, each side in its own process.")
    parser.add_argument("--a", default="", help="settings of A: key=value,...")
    parser.add_argument("--b", default="", help="settings of B: key=value,...")
    parser.add_argument("--a-rev", help="git revision of superloop_cell/ for "
                        "A (default: the working tree)")
    parser.add_argument("--b-rev", help="the same for B")
    parser.add_argument("--backend", choices=backend.BACKENDS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--steps", type=int, default=64, help="T")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps-per-round", type=int, default=3,
                        help="steady steps per side per round (their median)")
    parser.add_argument("--no-first-step", action="store_true",
                        help="steady steps only")
    parser.add_argument("--out", help="JSON file (default: "
                        "benchmarks/out/ab_BACKEND.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("rounds", "depth", "steps", "batch", "steps_per_round"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive "
                         f"integer, got {getattr(args, name)}.")
    try:
        args.a_settings = parse_settings(args.a)
        args.b_settings = parse_settings(args.b)
    except ValueError as error:
        parser.error(str(error))
    if (not args.worker and args.a_settings == args.b_settings
            and args.a_rev == args.b_rev):
        parser.error("A and B are the same: give --a/--b or --a-rev/--b-rev.")
    args.backend_name = backend.requested(args.backend)
    return args


def compare(args):
    """Starts both sides, runs the rounds; the results dict."""
    started = time.perf_counter()
    sides = []
    try:
        for name, rev, settings in (("A", args.a_rev, args.a_settings),
                                    ("B", args.b_rev, args.b_settings)):
            sides.append(Side(name, rev, settings, args))
            measure.log(f"{name}: {sides[-1].label()} "
                        f"({sides[-1].package})")
        for round_index in range(args.rounds):
            order = round_order(round_index, sides)
            line = [f"round {round_index + 1}:"]
            if not args.no_first_step:
                for side in order:
                    answer = side.ask("first")
                    side.first.append(answer["seconds"])
                    side.first_traces.append(answer["traces"])
                    line.append(f"{side.name} first {answer['seconds']:.2f} s")
            for side in order:
                seconds = side.ask(f"steady {args.steps_per_round}")["seconds"]
                side.steady.append(seconds)
                line.append(f"{side.name} steady {seconds * 1e3:.1f} ms")
            measure.log("  ".join(line))
    finally:
        for side in sides:
            side.close()
    a, b = sides
    results = {
        "config": {"a": a.label(), "b": b.label(), "a_package": a.package,
                   "b_package": b.package, "depth": args.depth,
                   "steps": args.steps, "batch": args.batch,
                   "rounds": args.rounds,
                   "steps_per_round": args.steps_per_round},
        "steady": ratio_statistics(a.steady, b.steady),
        "elapsed_s": time.perf_counter() - started,
    }
    if not args.no_first_step:
        results["first_step"] = {**ratio_statistics(a.first, b.first),
                                 "traces_a": a.first_traces,
                                 "traces_b": b.first_traces}
    return results


def main(argv=None):
    args = parse_args(argv)
    backend.select(args.backend_name)
    if args.worker:
        worker(json.loads(args.worker))
        return
    facts = measure.machine_facts()
    measure.log(measure.machine_line(facts))
    measure.log(f"depth {args.depth}, T {args.steps}, batch {args.batch}, "
                f"{args.rounds} rounds, {args.steps_per_round} steady steps "
                "per side per round; each side in its own process")
    results = {"machine": facts, **compare(args)}
    facts["load_average_at_end"] = measure.load_average()
    measure.log("")
    measure.log(measure.machine_line(facts))
    if measure.busy_note(facts):
        measure.log(measure.busy_note(facts))
    measure.log(f"A = {results['config']['a']}; B = {results['config']['b']}")
    measure.log("steady step: " + describe(results["steady"], "ms", 1e3))
    if "first_step" in results:
        measure.log("first step:  " + describe(results["first_step"], "s", 1))
    out = args.out or os.path.join(measure.DEFAULT_OUT,
                                   f"ab_{args.backend_name}.json")
    measure.write_json(results, out)
    measure.log(f"results: {out} ({results['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
