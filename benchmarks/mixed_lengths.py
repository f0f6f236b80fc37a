"""End to end on mixed lengths: training on sequences of many lengths.

    python -m benchmarks.mixed_lengths [--quick] [--backend tensorflow|jax]
                                       [--variants NAME,...] [--out FILE]

Each variant trains a fresh 32-layer model (the reference configuration:
`SuperloopCell` of 32 `SGUCell(16)` + `RegisterMemory(registers=4, width=8)`, or a
comparison cell of the same depth) for one epoch with `model.fit` over the
same sequences, whose lengths are drawn uniformly from a range (full: 4096
sequences of 16–512 steps, batch 256; `--quick`: 192 of 16–64, batch 32).
Every variant runs in a fresh subprocess, one after the other, so its peak
memory is its own (`VmHWM`) and no variant inherits another's compilations.
Per variant: wall time from building the model to the end of the last step,
compilations, each new length's first batch against later ones, the steady
batch of the most common length, and peak RSS.

Data, in two settings, both `superloop_cell.BucketedSequences`
(`benchmarks.datasets`):
- `padded`: boundaries at the longest sequence of each batch of the
  length-sorted sequences: least padding, but nearly every batch has its own
  length, so a compiled train step compiles once per batch.
- `buckets`: the default boundaries (powers of two): one shape per bucket.

Variant names are `MODEL[_xla]/DATA`: `superloop` (`layer_loop=False`: the
fused run's layers written out), `superloop_loop` (the same cell with
`layer_loop=True`: its fused run walks the layers in a loop, which compiles
faster; the default on JAX), `straightforward` (`benchmarks.baselines`),
`gru_stack` (`StackedRNNCells` of 32 `GRUCell(16)`);
`_xla` is `jit_compile=True` on TensorFlow. On JAX every variant is compiled
(jitted), so there is no `_xla` suffix and no uncompiled variant. Without
`--variants`, the full size runs every default variant (`variants_for`),
`--quick` five (`QUICK_VARIANTS`).
"""

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from benchmarks import backend  # imports no Keras

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
SEED = 0
CHILD_TIMEOUT_S = 1800.0
MODELS = ("superloop", "superloop_loop", "straightforward", "gru_stack")
OURS = ("superloop", "superloop_loop")
DATA = ("padded", "buckets")


@dataclass(frozen=True)
class Size:
    """How much data one variant trains on (one epoch)."""

    samples: int
    shortest: int  # lengths uniform on [shortest, longest]
    longest: int
    batch: int
    depth: int = 32


SIZES = {
    "full": Size(samples=4096, shortest=16, longest=512, batch=256),
    "quick": Size(samples=192, shortest=16, longest=64, batch=32),
    # For tests: seconds, not minutes.
    "toy": Size(samples=8, shortest=3, longest=4, batch=4, depth=2),
}


@dataclass(frozen=True)
class MixedVariant:
    name: str
    model: str  # one of MODELS
    jit_compile: bool
    buckets: bool
    default: bool


def variants_for(backend_name):
    """The variants on `backend_name`, `{name: MixedVariant}`.

    Default on TensorFlow: the project cell uncompiled (padded) and compiled
    (padded, buckets), with `layer_loop=True` compiled on buckets; the
    comparison cells uncompiled (padded, buckets). The rest (their compiled
    forms, the uncompiled project cell on buckets) run when `--variants`
    names them. Default on JAX: all eight.
    """
    tensorflow = backend_name == "tensorflow"
    variants = {}
    for model in MODELS:
        for jit_compile in (False, True) if tensorflow else (True,):
            for buckets in (False, True):
                suffix = "_xla" if tensorflow and jit_compile else ""
                name = f"{model}{suffix}/{DATA[buckets]}"
                if not tensorflow:
                    default = True
                elif model == "superloop":
                    default = jit_compile or not buckets
                elif model == "superloop_loop":
                    default = jit_compile and buckets
                else:
                    default = not jit_compile
                variants[name] = MixedVariant(name, model, jit_compile,
                                              buckets, default)
    return variants


# `--quick`: every model on buckets, and one project cell without them (for
# the "buckets against none" target), to stay within minutes.
QUICK_VARIANTS = {
    "tensorflow": ("superloop/padded", "superloop_xla/buckets",
                   "superloop_loop_xla/buckets", "straightforward/buckets",
                   "gru_stack/buckets"),
    "jax": ("superloop_loop/padded", "superloop/buckets",
            "superloop_loop/buckets", "straightforward/buckets",
            "gru_stack/buckets"),
}


def compiled_name(backend_name, model="superloop", buckets=True):
    """The name of `model`'s compiled variant, on buckets or padded data."""
    suffix = "_xla" if backend_name == "tensorflow" else ""
    return f"{model}{suffix}/{DATA[buckets]}"


def build_model(variant, depth):
    """A fresh compiled model of `variant`'s cell, any length."""
    from benchmarks import models

    if variant.model in OURS:
        cell = models.project_cell(
            depth, layer_loop=variant.model == "superloop_loop")
    elif variant.model == "straightforward":
        cell = models.straightforward_cell(depth)
    else:
        cell = models.gru_stack_cell(depth)
    return models.sequence_model(cell, variant.jit_compile)


def length_costs(records):
    """New-length and steady costs from `[(length, seconds, traces)]`.

    Returns `new_length_ratios` (the first batch of each length after the
    run's first batch, over the median of the later batches of that length,
    where there are any), and the steady batch: the median of the later
    batches of the most common length.
    """
    by_length = {}
    for index, (length, seconds, _) in enumerate(records):
        by_length.setdefault(length, []).append((index, seconds))
    ratios = {}
    for length, batches in by_length.items():
        first_index, first_seconds = batches[0]
        later = [s for _, s in batches[1:]]
        if first_index > 0 and later:
            ratios[length] = first_seconds / statistics.median(later)
    common = max(by_length, key=lambda n: (len(by_length[n]), n))
    later = [s for _, s in by_length[common][1:]]
    return {
        "new_length_ratios": ratios,
        "new_length_ratio_median": (
            statistics.median(ratios.values()) if ratios else None
        ),
        "steady_length": common,
        "steady_s": statistics.median(later) if later else None,
        "steady_batches": len(later),
    }


def run_variant(name, size, seed=SEED):
    """Trains one variant one epoch in this process; returns its record."""
    import keras

    from benchmarks import datasets, measure

    variant = variants_for(backend.active())[name]
    xs, ys = datasets.sequences(size.samples, size.shortest, size.longest,
                                seed)
    data = datasets.batches(xs, ys, size.batch, seed, variant.buckets)
    keras.utils.set_random_seed(seed)
    baseline_mb = measure.peak_rss_mb()
    with measure.JaxCompileTimer() as compiles:
        start = time.perf_counter()
        model = build_model(variant, size.depth)
        counts = measure.count_traces(model)
        # Spares Keras a second trace of the first step (README tip).
        model.optimizer.build(model.trainable_variables)
        timer = datasets.BatchTimer(counts)
        seen = datasets.BatchLengths(data)
        model.fit(data, epochs=1, shuffle=False, verbose=0,
                  callbacks=[seen, timer])
        wall = time.perf_counter() - start
    lengths = seen.lengths
    records = [(n, s, t) for n, (s, t) in zip(lengths, timer.records)]
    costs = length_costs(records)
    return {
        "variant": name,
        **asdict(variant),
        "size": asdict(size),
        "wall_s": wall,
        "batches": len(records),
        "distinct_lengths": len(set(lengths)),
        "real_steps": int(sum(len(x) for x in xs)),
        "padded_steps": int(size.batch * sum(lengths)),
        "traces": counts["traces"],
        "jax_compiles": ({"count": compiles.count,
                          "seconds": compiles.seconds}
                         if compiles.count else None),
        "first_batch_s": records[0][1],
        "batch_records": records,
        **costs,
        "baseline_mb": baseline_mb,
        "peak_mb": measure.peak_rss_mb(),
    }


def compilations(record):
    """What the table shows as compilations of the train step.

    JAX: one XLA compilation per trace. TensorFlow: graph traces without
    XLA; with XLA, one program per input shape under one trace, so the
    distinct shapes (TensorFlow's XLA cache is per shape; not counted
    directly).
    """
    if record.get("jit_compile") and record.get("jax_compiles") is None:
        return record.get("distinct_lengths")
    return record.get("traces")


def target_rows(results, backend_name):
    """The issue's three targets from the records of one run, for each of
    the project's cells (`OURS`) that ran compiled on buckets."""
    rows = {r["variant"]: r for r in results["variants"] if "wall_s" in r}

    def best(model):
        candidates = [r for r in rows.values() if r["model"] == model]
        return min(candidates, key=lambda r: r["wall_s"], default=None)

    targets = []
    for model in OURS:
        ours = rows.get(compiled_name(backend_name, model))
        if ours is None:
            continue
        for label, other, limit in (
            ("GRU-cell stack, best setting", best("gru_stack"), 0.6),
            ("straightforward cell, best setting", best("straightforward"),
             0.5),
            ("compiled without buckets",
             rows.get(compiled_name(backend_name, model, buckets=False)), 0.5),
        ):
            if other is None:
                continue
            ratio = ours["wall_s"] / other["wall_s"]
            targets.append({
                "ours": ours["variant"],
                "against": f"{label} ({other['variant']})",
                "ratio": ratio,
                "target": limit,
                "met": ratio <= limit,
            })
    return targets


def print_report(results):
    from benchmarks import measure

    backend_name = results["machine"]["backend"]
    ours = compiled_name(backend_name)
    walls = {r["variant"]: r.get("wall_s") for r in results["variants"]}

    def relative(row):
        return (row["wall_s"] / walls[ours]
                if row.get("wall_s") and walls.get(ours) else None)

    columns = [
        ("variant", "variant", 0),
        ("wall_s", "wall_s", 1),
        (f"x_{ours}", relative, 2),
        ("batches", "batches", 0),
        ("lengths", "distinct_lengths", 0),
        ("compiles", compilations, 0),
        ("first_s", "first_batch_s", 2),
        ("x_new_len", "new_length_ratio_median", 1),
        ("steady_T", "steady_length", 0),
        ("steady_ms", lambda r: r["steady_s"] * 1e3
         if r.get("steady_s") else None, 1),
        ("peak_MB", "peak_mb", 0),
        ("delta_MB", lambda r: r["peak_mb"] - r["baseline_mb"]
         if "peak_mb" in r else None, 0),
        ("note", "note", 0),
    ]
    size = results["config"]["size"]
    measure.log("")
    measure.log(measure.machine_line(results["machine"]))
    warning = measure.busy_note(results["machine"])
    if warning:
        measure.log(warning)
    measure.log(
        f"{size['samples']} sequences, lengths uniform on "
        f"{size['shortest']}–{size['longest']}, batch {size['batch']}, depth "
        f"{size['depth']}, one epoch"
    )
    measure.log(measure.table(results["variants"], columns))
    for target in results["targets"]:
        verdict = "met" if target["met"] else "MISSED"
        measure.log(f"target: {target['ours']} / {target['against']} = "
                    f"{target['ratio']:.2f} (target ≤ {target['target']}): "
                    f"{verdict}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="End-to-end training on mixed sequence lengths "
        "(see benchmarks/README.md)."
    )
    parser.add_argument("--quick", action="store_true",
                        help="192 sequences of 16–64 steps, batch 32")
    parser.add_argument("--size", choices=SIZES, help=argparse.SUPPRESS)
    parser.add_argument("--backend", choices=("tensorflow", "jax"))
    parser.add_argument("--variants", help="comma-separated variant names")
    parser.add_argument(
        "--out", help="JSON file (default: benchmarks/out/"
        "mixed_lengths_SIZE_BACKEND.json)"
    )
    parser.add_argument("--timeout", type=float, default=CHILD_TIMEOUT_S,
                        help="seconds per variant")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.size = args.size or ("quick" if args.quick else "full")
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    backend_name = backend.select(args.backend)
    # After select: Keras is imported here.
    from benchmarks import measure

    if args.child:
        spec = json.loads(args.child)
        measure.emit_child_result(
            run_variant(spec["variant"], SIZES[spec["size"]], spec["seed"])
        )
        return
    known = variants_for(backend_name)
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in names if v not in known]
        if unknown or not names:
            parser.error(f"--variants: expected names from "
                         f"{', '.join(known)}, got {args.variants!r}.")
    elif args.size == "quick":
        names = list(QUICK_VARIANTS[backend_name])
    else:
        names = [name for name, v in known.items() if v.default]
    results = {
        "machine": measure.machine_facts(),
        "config": {
            "size_name": args.size,
            "size": asdict(SIZES[args.size]),
            "variants": names,
            "seed": SEED,
            "command": " ".join(["python -m benchmarks.mixed_lengths"]
                                + list(sys.argv[1:] if argv is None
                                       else argv)),
        },
        "variants": [],
    }
    out = args.out or os.path.join(
        DEFAULT_OUT, f"mixed_lengths_{args.size}_{backend_name}.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    started = time.perf_counter()
    measure.log(measure.machine_line(results["machine"]))
    for name in names:
        spec = {"variant": name, "size": args.size, "seed": SEED}
        record = measure.run_child(
            "benchmarks.mixed_lengths", backend_name,
            ["--child", json.dumps(spec)], args.timeout)
        record.setdefault("variant", name)
        results["variants"].append(record)
        measure.write_json(results, out)
        measure.log(
            f"  {name:26s} "
            + (f"{record['wall_s']:7.1f} s, {compilations(record)} compiles, "
               f"peak {record['peak_mb']:.0f} MB"
               if "wall_s" in record else record.get("note", "?"))
        )
    results["targets"] = target_rows(results, backend_name)
    results["machine"]["load_average_at_end"] = measure.load_average()
    results["elapsed_s"] = time.perf_counter() - started
    measure.write_json(results, out)
    print_report(results)
    measure.log(f"results: {out} ({results['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
