"""The reference model against the comparison cells, all in one run.

    python -m benchmarks.run --reference [--backend B | --backends B,B,...]
                             [--depth N] [--steps T] [--batch N]
                             [--rounds N] [--variants NAME,...] [--out DIR]
    python -m benchmarks.run --quick     # depth 4, T 16, batch 64: a minute

Every variant (`benchmarks.models.VARIANTS`) trains `Input((T, 2)) →
RNN(cell, return_sequences=True) → Dense(1)` with RMSprop on MSE by
`train_on_batch` on random data. Measured per variant:

- first step: a fresh model's construction, compile and first
  `train_on_batch` (which traces, and with XLA compiles, the train step),
  after one-time process costs were paid on throwaway models;
- steady step: after two warm-up steps, rounds in which every variant runs
  one step in turn, starting one further each round; median and IQR;
- new length: after that, the first step at T' = 1.5·T (TensorFlow
  retraces, XLA and JAX compile again), and a second step at T'.

Before timing, the plain cell is checked to compute the same function as
`SuperloopCell(fused=False)` with copied weights. `--backends` runs each
backend in its own process, one after the other, and prints the README's
table for all of them, with each backend's times relative to JAX's.
Results: `OUT/reference_BACKEND.json` per backend.
"""

import argparse
import os
import time
from dataclasses import asdict, dataclass

from benchmarks import backend, measure  # import no Keras

CHILD_TIMEOUT_S = 3600.0


@dataclass
class Plan:
    depth: int
    steps: int
    batch: int
    rounds: int
    warmup: int = 2


PLANS = {
    "reference": Plan(depth=32, steps=64, batch=256, rounds=5),
    "quick": Plan(depth=4, steps=16, batch=64, rounds=3),
    "tiny": Plan(depth=2, steps=4, batch=8, rounds=2, warmup=1),  # tests
}


def new_length(steps):
    return steps + steps // 2


def first_step(variant, plan, x, y):
    """`(model, counts, seconds)`: a fresh model built and trained once."""
    import keras

    keras.backend.clear_session()
    keras.utils.set_random_seed(measure.SEED)
    start = time.perf_counter()
    model = variant.build(plan.depth)
    counts = measure.count_traces(model)
    model.train_on_batch(x, y)
    return model, counts, time.perf_counter() - start


def warm_up_process(names):
    """Pays one-time costs (runtime start, XLA's) on throwaway models."""
    import keras
    import numpy as np

    from benchmarks import models

    x, y = measure.random_batch(np.random.default_rng(0), 4, 3)
    for name in names:
        keras.backend.clear_session()
        try:
            models.VARIANTS[name].build(2).train_on_batch(x, y)
        except Exception:  # noqa: BLE001  (measured and reported later)
            pass
    keras.backend.clear_session()


def measure_variants(names, plan):
    """First, steady and new-length steps of `names`; one row each."""
    import numpy as np

    from benchmarks import models

    rng = np.random.default_rng(measure.SEED)
    x, y = measure.random_batch(rng, plan.batch, plan.steps)
    rows, live = {}, {}
    for name in names:
        rows[name] = {"variant": name,
                      "description": models.VARIANTS[name].description}
        try:
            model, counts, seconds = first_step(models.VARIANTS[name], plan,
                                                x, y)
        except Exception as error:  # noqa: BLE001  (report, go on)
            rows[name]["note"] = measure.error_note(error)
            measure.log(f"  {name:16s} {rows[name]['note']}")
            continue
        rows[name]["first_s"] = seconds
        live[name] = (model, counts)
        measure.log(f"  {name:16s} first step {seconds:8.2f} s")
    for model, _ in live.values():
        for _ in range(plan.warmup):
            model.train_on_batch(x, y)
    steps = {name: (lambda m=model: m.train_on_batch(x, y))
             for name, (model, _) in live.items()}
    times = measure.interleaved(steps, plan.rounds)
    longer = new_length(plan.steps)
    x2, y2 = measure.random_batch(rng, plan.batch, longer)
    for name, (model, counts) in live.items():
        row, stats = rows[name], measure.summarize(times[name])
        row["steady_ms"] = stats["median_s"] * 1e3
        row["iqr_ms"] = (stats["p75_s"] - stats["p25_s"]) * 1e3
        before = counts["traces"]
        row["new_length_s"] = measure.timed_step(model, x2, y2)
        row["new_length_traces"] = counts["traces"] - before
        row["again_ms"] = measure.timed_step(model, x2, y2) * 1e3
        row["new_length_x_steady"] = row["new_length_s"] * 1e3 / row[
            "steady_ms"]
        measure.log(f"  {name:16s} steady {row['steady_ms']:9.1f} ms (IQR "
                    f"{row['iqr_ms']:.1f}); T {longer}: first "
                    f"{row['new_length_s']:.2f} s, again "
                    f"{row['again_ms']:.1f} ms")
    looped = rows.get("looped", {}).get("steady_ms")
    for row in rows.values():
        if looped and "steady_ms" in row:
            row["x_looped"] = row["steady_ms"] / looped
    return list(rows.values())


def run_backend(names, plan, out):
    """This process's backend: the check, then every variant; the record."""
    from benchmarks import baselines

    started = time.perf_counter()
    facts = measure.machine_facts()
    measure.log(measure.machine_line(facts))
    measure.log(f"depth {plan.depth}, T {plan.steps}, batch {plan.batch}, "
                f"{plan.rounds} rounds; variants {', '.join(names)}")
    try:
        difference = baselines.check_against_project_cell()
        check = {"max_abs_difference": difference,
                 "matches": difference < 1e-5}
    except Exception as error:  # noqa: BLE001  (the package is being edited)
        check = {"note": measure.error_note(error)}
    measure.log(f"baseline check (plain cell vs SuperloopCell): {check}")
    warm_up_process(names)
    rows = measure_variants(names, plan)
    facts["load_average_at_end"] = measure.load_average()
    record = {"machine": facts, "plan": asdict(plan), "baseline_check": check,
              "rows": rows, "elapsed_s": time.perf_counter() - started}
    measure.write_json(record, os.path.join(
        out, f"reference_{facts['backend']}.json"))
    return record


COLUMNS = [
    ("variant", "variant", 0),
    ("first_s", "first_s", 2),
    ("steady_ms", "steady_ms", 1),
    ("iqr_ms", "iqr_ms", 1),
    ("x_looped", "x_looped", 2),
    ("new_len_s", "new_length_s", 2),
    ("traces", "new_length_traces", 0),
    ("x_steady", "new_length_x_steady", 1),
    ("again_ms", "again_ms", 1),
    ("note", "note", 0),
]


def readme_table(records):
    """The README's table: a row per backend and measure, a column per
    variant; `(÷ JAX)` where JAX ran the same variant."""
    names = [n for n in ("looped", "looped_xla", "unfused", "straightforward",
                         "gru_stack")
             if any(r["variant"] == n for rec in records for r in rec["rows"])]
    by = {rec["machine"]["backend"]: {r["variant"]: r for r in rec["rows"]}
          for rec in records}
    jax = by.get("jax", {})
    lines = ["| " + " | ".join(["", *names]) + " |",
             "|" + "---|" * (len(names) + 1)]
    for name, rows in by.items():
        for key, label, scale, unit in (
                ("steady_ms", "steady training step", 1, "ms"),
                ("first_s", "first training step", 1, "s"),
                ("new_length_s", "first batch of a new length", 1, "s")):
            cells = []
            for variant in names:
                value = rows.get(variant, {}).get(key)
                ratio = jax.get(variant, {}).get(key)
                text = "–" if value is None else f"{value * scale:.3g} {unit}"
                if value is not None and ratio and name != "jax":
                    text += f" ({value / ratio:.2f}× JAX)"
                cells.append(text)
            lines.append(f"| {name}: {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(records):
    for record in records:
        measure.log("")
        measure.log(measure.machine_line(record["machine"]))
        note = measure.busy_note(record["machine"])
        if note:
            measure.log(note)
        plan = record["plan"]
        measure.log(f"depth {plan['depth']}, T {plan['steps']}, batch "
                    f"{plan['batch']}, new length T "
                    f"{new_length(plan['steps'])}; "
                    f"{record['elapsed_s']:.0f} s")
        measure.log(measure.table(record["rows"], COLUMNS))
    measure.log("")
    measure.log(readme_table(records))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="The reference model against the comparison cells "
        "(see benchmarks/README.md).")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--reference", action="store_true",
                       help="depth 32, T 64, batch 256, 5 rounds (default)")
    group.add_argument("--quick", action="store_true",
                       help="depth 4, T 16, batch 64, 3 rounds")
    group.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--backend", choices=backend.BACKENDS)
    chosen.add_argument("--backends",
                        help="comma-separated: each in its own process")
    for name in ("depth", "steps", "batch", "rounds"):
        parser.add_argument(f"--{name}", type=int,
                            help="overrides the plan's")
    parser.add_argument("--variants", help="comma-separated names "
                        "(default: the backend's, models.default_variants)")
    parser.add_argument("--out", default=measure.DEFAULT_OUT)
    parser.add_argument("--child", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = PLANS["quick" if args.quick else "tiny" if args.tiny
                 else "reference"]
    for name in ("depth", "steps", "batch", "rounds"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name}: expected a positive integer, got "
                             f"{value}.")
            setattr(plan, name, value)
    args.plan = plan
    args.backend_list = ([b.strip() for b in args.backends.split(",")]
                         if args.backends else None)
    if args.backend_list and not set(args.backend_list) <= set(
            backend.BACKENDS):
        parser.error(f"--backends: expected names from {backend.BACKENDS}, "
                     f"got {args.backends!r}.")
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    if args.backend_list:
        records = []
        forwarded = [a for a in (argv if argv is not None
                                 else __import__("sys").argv[1:])]
        forwarded = [a for i, a in enumerate(forwarded)
                     if a != "--backends" and not a.startswith("--backends=")
                     and (i == 0 or forwarded[i - 1] != "--backends")]
        for name in args.backend_list:
            measure.log(f"== {name} (own process)")
            record = measure.run_child("benchmarks.run", name,
                                       [*forwarded, "--child"],
                                       CHILD_TIMEOUT_S)
            if "rows" in record:
                records.append(record)
            else:
                measure.log(f"  {name}: {record.get('note')}")
        report(records)
        return
    name = backend.select(args.backend)
    from benchmarks import models  # imports Keras

    known = models.VARIANTS
    names = ([v.strip() for v in args.variants.split(",") if v.strip()]
             if args.variants else models.default_variants(name))
    if not names or not set(names) <= set(known):
        parser.error(f"--variants: expected names from {', '.join(known)}, "
                     f"got {args.variants!r}.")
    record = run_backend(names, args.plan, args.out)
    if args.child:
        measure.emit_child_result(record)
    else:
        report([record])


if __name__ == "__main__":
    main()
