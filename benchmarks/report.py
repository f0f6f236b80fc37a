"""Reporting: plain-text tables, results.json, the sweep's plot.

Import after `benchmarks.backend.select` (the plot colours variants by their
place in `models.VARIANTS`).
"""

import json

from benchmarks import models
from benchmarks.measure import MEMORY_CHILD_STEPS, GEMM_SIZE, busy_note, log

TEXT_HEADERS = ("variant", "note")
NOTE_WIDTH = 90  # in the printed tables; the JSON keeps the whole note


def format_value(value, digits):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows, columns):
    """Plain-text table; `columns` is [(header, key or function, digits)]."""
    cells = []
    for row in rows:
        line = []
        for _, key, digits in columns:
            value = key(row) if callable(key) else row.get(key)
            line.append(format_value(value, digits)[:NOTE_WIDTH])
        cells.append(line)
    headers = [header for header, _, _ in columns]
    widths = [
        max([len(header)] + [len(line[i]) for line in cells])
        for i, header in enumerate(headers)
    ]
    left = [header in TEXT_HEADERS for header in headers]

    def justify(line):
        return "  ".join(
            text.ljust(width) if is_text else text.rjust(width)
            for text, width, is_text in zip(line, widths, left)
        ).rstrip()

    out = [justify(headers), justify(["-" * w for w in widths])]
    out.extend(justify(line) for line in cells)
    return "\n".join(out)


def write_json(results, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


def percent_of_gemm(gemm_gflops):
    def value(row):
        if row.get("gflops") is None or not gemm_gflops:
            return None
        return 100.0 * row["gflops"] / gemm_gflops

    return value


def note(row):
    return row.get("note", "")


def step_columns(gemm_gflops):
    return [
        ("variant", "variant", 0),
        ("depth", "depth", 0),
        ("T", "steps", 0),
        ("batch", "batch", 0),
        ("first_s", "first_step_s", 2),
        ("step_ms", "step_ms", 2),
        ("iqr_ms", "iqr_ms", 2),
        ("us/t", "us_per_timestep", 1),
        ("x_looped", "relative_to_looped", 2),
        ("GFLOP/s", "gflops", 2),
        ("%gemm", percent_of_gemm(gemm_gflops), 2),
        ("note", note, 0),
    ]


NEW_LENGTH_COLUMNS = [
    ("variant", "variant", 0),
    ("T", "steps", 0),
    ("T'", "new_steps", 0),
    ("first_s", "first_s", 2),
    ("x_first", "first_ratio", 1),
    ("traces", "first_traces", 0),
    ("x_again", "again_ratio", 2),
    ("T''", "second_new_steps", 0),
    ("x_T''", "second_ratio", 1),
    ("traces''", "second_traces", 0),
    ("traces_back", "back_traces", 0),
    ("note", note, 0),
]

FIT_COLUMNS = [
    ("variant", "variant", 0),
    ("depth", "depth", 0),
    ("T", "steps", 0),
    ("batch", "batch", 0),
    ("traces_1st", "traces_first_batch", 0),
    ("retraces", "retraces_later", 0),
    ("first_batch_s", "first_batch_s", 2),
    ("steady_ms", "steady_ms", 2),
    ("T'", "new_steps", 0),
    ("x_first_T'", "new_first_ratio", 2),
    ("T''", "second_new_steps", 0),
    ("x_first_T''", "second_new_first_ratio", 2),
    ("x_repeat_T'", "repeat_ratio", 2),
    ("fixed_ms", "fixed_shape_steady_ms", 2),
    ("x_fixed", "padded_vs_fixed", 2),
    ("note", note, 0),
]

MEMORY_COLUMNS = [
    ("variant", "variant", 0),
    ("depth", "depth", 0),
    ("T", "steps", 0),
    ("batch", "batch", 0),
    ("peak_MB", "peak_mb", 0),
    ("after_import_MB", "baseline_mb", 0),
    ("delta_MB", "delta_mb", 0),
    ("note", note, 0),
]


def machine_line(machine):
    return (
        f"machine: {machine['cpu_model']}, {machine['cpus_usable']}/"
        f"{machine['cpu_count']} CPUs, python {machine['python']}, keras "
        f"{machine['keras']}, {machine['backend']} "
        f"{machine.get('tensorflow') or machine.get('jax')}, numpy "
        f"{machine['numpy']}; load average start "
        f"{machine['load_average_at_start']}, end "
        f"{machine.get('load_average_at_end')}"
    )


def plot(results, path):
    """The sweep's six panels as a PNG; `None` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not importable: no plot written.")
        return None
    plan = results["config"]["plan_details"]
    rows = [r for r in results["points"] if r.get("step_ms") is not None]
    batch = plan["batch"]
    reference_depth = plan["reference_depth"]
    depth_sweep_steps = plan["depth_sweep_steps"]
    figure, axes = plt.subplots(2, 3, figsize=(16, 9))
    variants = results["config"]["variants"]

    def lines(ax, records, key, x_key, select, label_suffix=""):
        for variant in variants:
            points = sorted(
                (r[x_key], r[key])
                for r in records
                if r["variant"] == variant
                and select(r)
                and r.get(key) is not None
                and r[key] > 0  # log axes
            )
            if points:
                xs, ys = zip(*points)
                ax.plot(
                    xs,
                    ys,
                    marker="o",
                    color=f"C{list(models.VARIANTS).index(variant)}",
                    label=variant + label_suffix,
                )

    def at_reference_depth(r):
        return r["depth"] == reference_depth and r["batch"] == batch

    lines(axes[0][0], rows, "step_ms", "steps", at_reference_depth)
    lines(axes[0][1], rows, "first_step_s", "steps", at_reference_depth)
    memory = results.get("memory", [])
    lines(axes[0][2], memory, "delta_mb", "steps", at_reference_depth)
    lines(axes[1][2], rows, "gflops", "steps", at_reference_depth)
    for ax, key in ((axes[1][0], "step_ms"), (axes[1][1], "first_step_s")):
        for steps in depth_sweep_steps:
            suffix = f" T={steps}" if len(depth_sweep_steps) > 1 else ""
            lines(
                ax,
                rows,
                key,
                "depth",
                lambda r, s=steps: r["steps"] == s and r["batch"] == batch,
                suffix,
            )
    titles = [
        [
            f"steady train step (ms), depth {reference_depth}, batch {batch}",
            "first step: build + trace + run (s)",
            "peak RSS over after-import (MB)",
        ],
        [
            f"steady train step (ms) vs depth, batch {batch}",
            "first step (s) vs depth",
            "achieved GFLOP/s (analytic SGU/GRU FLOPs)",
        ],
    ]
    for i in range(2):
        for j in range(3):
            ax = axes[i][j]
            ax.set_title(titles[i][j], fontsize=10)
            ax.set_xlabel("depth" if (i == 1 and j < 2) else "T (time steps)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    machine = results["machine"]
    figure.suptitle(
        f"superloop_cell benchmarks ({results['config']['plan']}, "
        f"{machine['backend']}) — "
        f"{machine.get('cpu_model')}, {machine.get('cpus_usable')} CPUs",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def print_summary(results, plot_path):
    """The sweep's summary: machine, GEMM, FLOPs and every table."""
    machine = results["machine"]
    gemm_gflops = results["gemm"]["reference_gflops"]
    log("")
    log("== summary")
    log(machine_line(machine))
    warning = busy_note(machine)
    if warning:
        log(warning)
    log(
        f"GEMM reference: {gemm_gflops:.1f} GFLOP/s ({GEMM_SIZE}^2 float32 "
        "matmul, best of start and end)"
    )
    log(f"FLOPs: {models.FLOP_FORMULA}")
    log("")
    log("Train steps (steady = median of interleaved rounds after warm-up):")
    log(table(results["points"], step_columns(gemm_gflops)))
    if results["new_length"]:
        log("")
        log(
            "New sequence length with train_on_batch (x_* = time per "
            "timestep / steady time per timestep at T):"
        )
        log(table(results["new_length"], NEW_LENGTH_COLUMNS))
    if results["fit"]:
        log("")
        log(
            "model.fit on padded_batch tf.data (T = None in the pipeline; "
            "x_* = batch time per timestep / steady per timestep at T):"
        )
        log(table(results["fit"], FIT_COLUMNS))
    if results["memory"]:
        log("")
        log(
            f"Peak RSS while training ({MEMORY_CHILD_STEPS} steps, one "
            "subprocess each):"
        )
        log(table(results["memory"], MEMORY_COLUMNS))
    log("")
    log(f"plot: {plot_path}" if plot_path else "plot: not written")
    log(f"elapsed: {results['elapsed_s']:.0f} s")
