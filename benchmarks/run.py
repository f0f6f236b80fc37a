"""Training-speed benchmarks of `SuperloopCell` against comparison cells.

    python benchmarks/run.py [--quick] [--out DIR] [--backend tensorflow|jax]
                             [--variants looped,straightforward,...]

Every model is `Input((T, 2)) → keras.layers.RNN(cell, return_sequences=True)
→ Dense(1)`, trained with RMSprop on MSE by `train_on_batch` on random NumPy
data. The variants and the columns of the tables are described in
`benchmarks/README.md` and in the `VARIANTS` registry below.

Sections, in order: machine facts; a check that the straightforward baseline
computes the same function as the project cell; a large-GEMM reference;
first-step and interleaved steady step times over a T sweep and a depth
sweep; new sequence lengths (`train_on_batch`, and `model.fit` on a padded
`tf.data` pipeline on TensorFlow); peak RSS against T, one subprocess per
point. Results go to `OUT/results.json` (rewritten after every section) and
`OUT/benchmarks.png`.
"""

import argparse
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

BACKENDS = ("tensorflow", "jax")


def _backend_from_argv():
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--backend", choices=BACKENDS)
    known, _ = parser.parse_known_args()
    return known.backend or os.environ.get("KERAS_BACKEND") or "tensorflow"


# Keras reads the backend once, at import: it has to be set before.
os.environ["KERAS_BACKEND"] = _backend_from_argv()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import baselines  # noqa: E402
from superloop_cell import RegisterMemory, SGUCell, SuperloopCell  # noqa: E402

BACKEND = keras.backend.backend()
IS_TENSORFLOW = BACKEND == "tensorflow"
if IS_TENSORFLOW:
    # Retracing on purpose (new lengths) would warn at every new model.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

INPUT_WIDTH = 2
UNITS = 16
MEMORY_DEPTH = 4
MEMORY_WIDTH = 8
REFERENCE_DEPTH = 32  # the reference configuration: 32 SGU layers
UNROLL_MAX_STEPS = 16  # unroll=True compiles for minutes beyond this
GEMM_SIZE = 2048
GEMM_REPEATS = 5
FIRST_STEP_LIMIT_S = 120.0
MEMORY_CHILD_TIMEOUT_S = 300.0
MEMORY_CHILD_STEPS = 3
FIT_FIXED_BATCHES = 8
SEED = 0
BASELINE_TOLERANCE = 1e-5
BUSY_LOAD_PER_CPU = 0.25  # 1-minute load at start above this: timings suspect
RESULT_MARKER = "MEMORY_RESULT "

# Analytic FLOPs per sample per time step, forward pass (multiply-add = 2).
SGU_ELEMENTWISE_FLOPS_PER_UNIT = 10
GRU_ELEMENTWISE_FLOPS_PER_UNIT = 15
TRAINING_FLOPS_FACTOR = 3  # forward + backward ≈ 3 × forward
FLOP_FORMULA = (
    "SGU layer, forward, per sample per time step: 2·in·2u + 2·u·u + "
    f"{SGU_ELEMENTWISE_FLOPS_PER_UNIT}u, with u = {UNITS}, in = "
    f"{INPUT_WIDTH}+{MEMORY_WIDTH} (input + memory feedback) for the first "
    "layer and u for the others; GRU layer (gru_stack, gru_layers): "
    f"2·in·3u + 2·u·3u + {GRU_ELEMENTWISE_FLOPS_PER_UNIT}u, in = "
    f"{INPUT_WIDTH} for the first; "
    f"training = {TRAINING_FLOPS_FACTOR} × forward; summed over layers, × T "
    "× batch per train step. The control projection, the register memory and "
    "the Dense head are not counted; `empty` has none."
)


# ---------------------------------------------------------------- variants


def _jit(flag):
    # The JAX trainer without jit runs op by op; on JAX everything is jitted.
    return flag if IS_TENSORFLOW else True


def _project_cell(depth, units, fused="auto"):
    return SuperloopCell(
        cells=[SGUCell(units) for _ in range(depth)],
        systems=[RegisterMemory(depth=MEMORY_DEPTH, width=MEMORY_WIDTH)],
        fused=fused,
    )


def _compiled_sequence_model(cell, jit_compile, steps=None, unroll=False):
    inputs = keras.Input((steps, INPUT_WIDTH))
    rnn = keras.layers.RNN(cell, return_sequences=True, unroll=unroll)
    return _compiled_head(inputs, rnn(inputs), jit_compile)


def _compiled_head(inputs, hidden, jit_compile):
    """`hidden` → Dense(1), compiled as every variant is (RMSprop, MSE)."""
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile(
        optimizer=keras.optimizers.RMSprop(),
        loss="mse",
        jit_compile=_jit(jit_compile),
    )
    return model


def build_looped(depth, units, steps):
    return _compiled_sequence_model(_project_cell(depth, units), False)


def build_looped_xla(depth, units, steps):
    return _compiled_sequence_model(_project_cell(depth, units), True)


def build_unrolled(depth, units, steps):
    return _compiled_sequence_model(
        _project_cell(depth, units), False, steps=steps, unroll=True
    )


def build_straightforward(depth, units, steps):
    cell = baselines.StraightforwardSuperloopCell(
        depth, units, memory_depth=MEMORY_DEPTH, memory_width=MEMORY_WIDTH
    )
    return _compiled_sequence_model(cell, False)


def build_gru_stack(depth, units, steps):
    cell = keras.layers.StackedRNNCells(
        [keras.layers.GRUCell(units) for _ in range(depth)]
    )
    return _compiled_sequence_model(cell, False)


def build_gru_layers(depth, units, steps):
    # What a user writes first: `depth` GRU layers, each its own loop over T.
    inputs = keras.Input((steps, INPUT_WIDTH))
    hidden = inputs
    for _ in range(depth):
        hidden = keras.layers.GRU(units, return_sequences=True)(hidden)
    return _compiled_head(inputs, hidden, False)


def build_empty(depth, units, steps):
    return _compiled_sequence_model(baselines.EmptyCell(), False)


@dataclass(frozen=True)
class Variant:
    build: object  # (depth, units, steps) -> compiled keras.Model
    description: str
    flops: str  # "sgu", "gru" or "none"
    fixed_steps: bool = False  # the model is built for one T
    default: bool = True  # run unless --variants names a subset


VARIANTS = {
    "looped": Variant(
        build_looped,
        "SuperloopCell (default construction: fused='auto') in keras.layers.RNN, "
        "jit_compile=False",
        "sgu",
    ),
    "looped_xla": Variant(
        build_looped_xla,
        "same model, jit_compile=True (XLA)",
        "sgu",
    ),
    "unrolled": Variant(
        build_unrolled,
        f"same cell, RNN(unroll=True), fixed T (run only for T <= "
        f"{UNROLL_MAX_STEPS})",
        "sgu",
        fixed_steps=True,
    ),
    "straightforward": Variant(
        build_straightforward,
        "baselines.StraightforwardSuperloopCell: same function, written "
        "the obvious way (per-layer concat + two matmuls)",
        "sgu",
    ),
    "gru_stack": Variant(
        build_gru_stack,
        "RNN(StackedRNNCells([GRUCell(16)] * depth)), no memory",
        "gru",
    ),
    "gru_layers": Variant(
        build_gru_layers,
        "depth keras.layers.GRU(16, return_sequences=True) layers, each its "
        "own loop over T, no memory; only when --variants names it (the GPU "
        "run compares against keras.layers.GRU)",
        "gru",
        default=False,
    ),
    "empty": Variant(
        build_empty,
        "baselines.EmptyCell: the loop and train step with next to no work",
        "none",
    ),
}


def train_flops(variant, depth, steps, batch):
    """Analytic training FLOPs of one train step (see `FLOP_FORMULA`)."""
    kind = VARIANTS[variant].flops
    u = UNITS
    if kind == "sgu":
        first_in = INPUT_WIDTH + MEMORY_WIDTH
        gates, elementwise = 2, SGU_ELEMENTWISE_FLOPS_PER_UNIT
        recurrent_gates = 1  # the recurrent kernel feeds the gate only
    elif kind == "gru":
        first_in = INPUT_WIDTH
        gates, elementwise = 3, GRU_ELEMENTWISE_FLOPS_PER_UNIT
        recurrent_gates = 3
    else:
        return None

    def per_layer(n_in):
        return (
            2 * n_in * gates * u + 2 * u * recurrent_gates * u + elementwise * u
        )

    forward = per_layer(first_in) + (depth - 1) * per_layer(u)
    return TRAINING_FLOPS_FACTOR * forward * steps * batch


# -------------------------------------------------------------------- plans


@dataclass
class Plan:
    """What one run measures."""

    name: str
    steps_sweep: list  # T values at reference_depth
    depths: list  # depth sweep ...
    depth_sweep_steps: list  # ... at these T
    batch: int
    # (depth, T, batch, variants) measured besides the sweeps
    extra_points: list = field(default_factory=list)
    warmup: int = 2
    rounds: int = 5
    new_length_base: tuple = (REFERENCE_DEPTH, 16, 256)  # (depth, T, batch)
    fit_variants: list = field(default_factory=list)
    fit_steps: int = 16
    memory_variants: list = field(default_factory=list)
    memory_steps: list = field(default_factory=list)
    first_step_limit_s: float = FIRST_STEP_LIMIT_S
    reference_depth: int = REFERENCE_DEPTH  # of the T sweep and memory


DEFAULT_VARIANTS = [name for name, v in VARIANTS.items() if v.default]

# The batch-1024 target: looped against the plain cell at depth 32.
LARGE_BATCH_POINT = (REFERENCE_DEPTH, 64, 1024, ["looped", "straightforward"])

PLANS = {
    "full": Plan(
        name="full",
        steps_sweep=[16, 64, 256, 1024],
        depths=[4, 32],
        depth_sweep_steps=[16, 64],
        batch=256,
        extra_points=[LARGE_BATCH_POINT],
        warmup=2,
        rounds=7,
        new_length_base=(REFERENCE_DEPTH, 64, 256),
        fit_variants=["looped", "looped_xla", "straightforward"],
        fit_steps=64,
        memory_variants=["looped", "straightforward", "gru_stack"],
        memory_steps=[16, 64, 256, 1024],
    ),
    "quick": Plan(
        name="quick",
        steps_sweep=[16, 64],
        depths=[4, 32],
        depth_sweep_steps=[16],
        batch=256,
        warmup=2,
        rounds=5,
        new_length_base=(4, 16, 256),
        fit_variants=["looped", "straightforward"],
        fit_steps=16,
        memory_variants=["looped", "straightforward"],
        memory_steps=[16, 64],
        reference_depth=4,  # the T sweep at depth 4, to stay under 5 min
    ),
    # The reference configuration only: what its targets compare
    # (first and steady step at T 16 and 64, batch 1024, a new length), in
    # about 8 minutes on 2 cores; for a short run on a lent GPU.
    "reference": Plan(
        name="reference",
        steps_sweep=[16, 64],
        depths=[REFERENCE_DEPTH],
        depth_sweep_steps=[16],
        batch=256,
        extra_points=[LARGE_BATCH_POINT],
        warmup=2,
        rounds=5,
        new_length_base=(REFERENCE_DEPTH, 64, 256),
        fit_variants=["looped", "straightforward"],
        fit_steps=64,
    ),
    # For developing this script on a busy machine; hidden from --help.
    "tiny": Plan(
        name="tiny",
        steps_sweep=[4, 8],
        depths=[2, 3],
        depth_sweep_steps=[4],
        batch=16,
        warmup=1,
        rounds=2,
        new_length_base=(2, 4, 16),
        fit_variants=["looped"],
        fit_steps=4,
        memory_variants=["looped"],
        memory_steps=[4],
        first_step_limit_s=60.0,
        reference_depth=2,
    ),
}


def plan_points(plan, variants):
    """The (depth, T, batch, variants) groups, each measured interleaved."""
    points = [(plan.reference_depth, t, plan.batch) for t in plan.steps_sweep]
    for depth in plan.depths:
        for steps in plan.depth_sweep_steps:
            if (depth, steps, plan.batch) not in points:
                points.append((depth, steps, plan.batch))
    groups = [(d, t, b, list(variants)) for d, t, b in points]
    for depth, steps, batch, names in plan.extra_points:
        kept = [v for v in names if v in variants]
        if kept:
            groups.append((depth, steps, batch, kept))
    return groups


# ------------------------------------------------------------------ helpers


class FirstStepTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    """Raises `FirstStepTimeout` in Python code running after `seconds`.

    A long C++ call (an XLA compile) is not interrupted; it is caught when it
    returns, by the caller comparing the elapsed time.
    """
    if (
        not hasattr(signal, "SIGALRM")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return

    def _raise(signum, frame):
        raise FirstStepTimeout(f"first step took more than {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def count_traces(model):
    """Counts how often the model's train step is traced (Python runs).

    The train step's Python body runs once per trace (TF `tf.function`,
    JAX `jit`), never per executed step, so the count is the trace count.
    Install before the first train call.
    """
    counts = {"traces": 0}
    train_step = model.train_step

    def counting_train_step(*args, **kwargs):
        counts["traces"] += 1
        return train_step(*args, **kwargs)

    model.train_step = counting_train_step
    return counts


def random_batch(rng, batch, steps):
    x = rng.standard_normal((batch, steps, INPUT_WIDTH), dtype=np.float32)
    y = rng.standard_normal((batch, steps, 1), dtype=np.float32)
    return x, y


def timed_step(model, x, y):
    start = time.perf_counter()
    model.train_on_batch(x, y)  # returns NumPy values: the step has finished
    return time.perf_counter() - start


def summarize(times):
    if len(times) > 1:
        p25, _, p75 = statistics.quantiles(times, n=4)
    else:
        p25 = p75 = times[0]
    return {
        "median_s": statistics.median(times),
        "p25_s": p25,
        "p75_s": p75,
        "min_s": min(times),
        "n": len(times),
    }


def log(message):
    print(message, flush=True)


def error_note(error):
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"error: {type(error).__name__}: {first_line}"[:200]


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB.

    Linux: `VmHWM` of /proc/self/status, which starts afresh at `exec`
    (`ru_maxrss` keeps the forking parent's peak across `fork` + `exec`).
    Elsewhere `ru_maxrss` (macOS counts bytes, Linux kibibytes).
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


# ------------------------------------------------------------ machine facts


def _package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_total_gb():
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def machine_facts():
    facts = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None
        ),
        "cpu_model": _cpu_model(),
        "memory_total_gb": _memory_total_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": BACKEND,
        "numpy": np.__version__,
        "load_average_at_start": load_average(),
    }
    if IS_TENSORFLOW:
        facts["tensorflow"] = _package_version("tensorflow")
        # TensorFlow's thread pools: one thread per core each unless these
        # variables (read when TensorFlow starts) say otherwise.
        for name in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS"):
            facts[name] = os.environ.get(name, "default")
    else:
        facts["jax"] = _package_version("jax")
        facts["jaxlib"] = _package_version("jaxlib")
    return facts


# ------------------------------------------------------------- measurements


def measure_gemm(size=GEMM_SIZE, repeats=GEMM_REPEATS):
    """Throughput of a `size`×`size` float32 `keras.ops.matmul`."""
    rng = np.random.default_rng(SEED)
    a, b = (
        ops.convert_to_tensor(rng.standard_normal((size, size), np.float32))
        for _ in range(2)
    )

    def once():
        start = time.perf_counter()
        c = ops.matmul(a, b)
        ops.convert_to_numpy(c[:1, :1])  # waits for asynchronous backends
        return time.perf_counter() - start

    once()
    once()
    times = [once() for _ in range(repeats)]
    flops = 2 * size**3
    return {
        "size": size,
        "times_s": times,
        "gflops_best": flops / min(times) / 1e9,
        "gflops_median": flops / statistics.median(times) / 1e9,
    }


def warm_up_process():
    """Pays one-time costs (runtime, XLA start-up) before any timed model."""
    start = time.perf_counter()
    rng = np.random.default_rng(SEED)
    x, y = random_batch(rng, 8, 4)
    notes = {}
    for variant in ("looped", "looped_xla", "straightforward"):
        keras.backend.clear_session()
        try:
            VARIANTS[variant].build(3, 4, 4).train_on_batch(x, y)
        except Exception as error:  # measured (and reported) again later
            notes[variant] = error_note(error)
    keras.backend.clear_session()
    return {"seconds": time.perf_counter() - start, "errors": notes}


def skip_reason(variant, depth, steps, timed_out):
    if VARIANTS[variant].fixed_steps and steps > UNROLL_MAX_STEPS:
        return f"not run: unroll restricted to T <= {UNROLL_MAX_STEPS}"
    for bad_depth, bad_steps in timed_out.get(variant, []):
        if depth >= bad_depth and steps >= bad_steps:
            return (
                f"skipped: first step exceeded the limit at depth "
                f"{bad_depth}, T {bad_steps}"
            )
    return None


def first_step(variant, depth, steps, x, y, limit_s, prebuild=False):
    """Builds a fresh model and times build + trace/compile + first step.

    With `prebuild`, the optimizer's variables are created before the first
    step (`benchmarks/first_step.py`), which spares Keras a second trace."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    try:
        with time_limit(limit_s):
            model = VARIANTS[variant].build(depth, UNITS, steps)
            counts = count_traces(model)
            if prebuild:
                model.optimizer.build(model.trainable_variables)
            model.train_on_batch(x, y)
    except Exception as error:
        # The timeout may come back wrapped by the tracing machinery.
        if time.perf_counter() - start < limit_s:
            raise
        raise FirstStepTimeout(
            f"first step took more than {limit_s:.0f} s"
        ) from error
    elapsed = time.perf_counter() - start
    if elapsed > limit_s:
        raise FirstStepTimeout(f"first step took {elapsed:.0f} s")
    return model, counts, elapsed


def run_group(depth, steps, batch, variants, plan, timed_out):
    """First-step and interleaved steady step times of one (depth, T, batch).

    Returns `(rows, live)`: one row per variant, and the warmed-up models
    `{variant: (model, trace_counts)}` for follow-up measurements.
    """
    rng = np.random.default_rng(SEED)
    x, y = random_batch(rng, batch, steps)
    rows, live = {}, {}
    for variant in variants:
        row = {
            "variant": variant,
            "depth": depth,
            "steps": steps,
            "batch": batch,
        }
        rows[variant] = row
        reason = skip_reason(variant, depth, steps, timed_out)
        if reason:
            row["note"] = reason
            continue
        try:
            model, counts, seconds = first_step(
                variant, depth, steps, x, y, plan.first_step_limit_s
            )
        except FirstStepTimeout as error:
            timed_out.setdefault(variant, []).append((depth, steps))
            row["note"] = f"skipped: {error}"
            log(f"  {variant:16s} {row['note']}")
            continue
        except Exception as error:  # report and go on with the others
            row["note"] = error_note(error)
            log(f"  {variant:16s} {row['note']}")
            continue
        row["first_step_s"] = seconds
        if variant == "looped_xla" and not IS_TENSORFLOW:
            row["note"] = "JAX: always jitted, same model as looped"
        live[variant] = (model, counts)
        log(f"  {variant:16s} first step {seconds:7.2f} s")

    for model, _ in live.values():
        for _ in range(plan.warmup):
            model.train_on_batch(x, y)

    order = list(live)
    times = {variant: [] for variant in order}
    for round_index in range(plan.rounds):
        # Round robin, starting one further each round, so drift and
        # position effects hit every variant alike.
        shift = round_index % max(len(order), 1)
        for variant in order[shift:] + order[:shift]:
            times[variant].append(timed_step(live[variant][0], x, y))

    looped = statistics.median(times["looped"]) if times.get("looped") else None
    for variant in order:
        row = rows[variant]
        stats = summarize(times[variant])
        median = stats["median_s"]
        row["steady"] = stats
        row["step_ms"] = median * 1e3
        row["iqr_ms"] = (stats["p75_s"] - stats["p25_s"]) * 1e3
        row["us_per_timestep"] = median / steps * 1e6
        row["relative_to_looped"] = median / looped if looped else None
        row["traces"] = live[variant][1]["traces"]
        flops = train_flops(variant, depth, steps, batch)
        row["train_flops"] = flops
        row["gflops"] = flops / median / 1e9 if flops else None
        log(
            f"  {variant:16s} steady {median * 1e3:9.2f} ms "
            f"(IQR {row['iqr_ms']:.2f} ms, n={stats['n']})"
        )
    return list(rows.values()), live


def new_length_steps(steps):
    return steps + steps // 2, 2 * steps


def measure_new_lengths(live, rows, steps, batch):
    """`train_on_batch` at two new lengths after warm-up at `steps`.

    A new input shape makes the train function retrace (TF: `tf.function`
    with `reduce_retracing=True`, which relaxes T to None after the first
    retrace; JAX: `jit`, once per shape; TF+XLA compiles once per shape).
    """
    rng = np.random.default_rng(SEED + 1)
    first_length, second_length = new_length_steps(steps)
    x1, y1 = random_batch(rng, batch, first_length)
    x2, y2 = random_batch(rng, batch, second_length)
    steady = {row["variant"]: row.get("step_ms") for row in rows}
    results = []
    for variant, (model, counts) in live.items():
        if VARIANTS[variant].fixed_steps:
            results.append({"variant": variant, "note": "n/a: built for one T"})
            continue
        per_timestep = steady[variant] / 1e3 / steps

        def ratio(seconds, length):
            return seconds / length / per_timestep  # noqa: B023

        before = counts["traces"]
        first = timed_step(model, x1, y1)
        traces_first = counts["traces"] - before
        again = statistics.median(timed_step(model, x1, y1) for _ in range(3))
        before = counts["traces"]
        second = timed_step(model, x2, y2)
        traces_second = counts["traces"] - before
        before = counts["traces"]
        back = timed_step(model, *random_batch(rng, batch, steps))
        traces_back = counts["traces"] - before
        result = {
            "variant": variant,
            "steps": steps,
            "new_steps": first_length,
            "second_new_steps": second_length,
            "first_s": first,
            "first_ratio": ratio(first, first_length),
            "first_traces": traces_first,
            "again_s": again,
            "again_ratio": ratio(again, first_length),
            "second_s": second,
            "second_ratio": ratio(second, second_length),
            "second_traces": traces_second,
            "back_s": back,
            "back_traces": traces_back,
        }
        results.append(result)
        log(
            f"  {variant:16s} T={first_length}: first {first:7.2f} s "
            f"({traces_first} trace), per-timestep x{result['first_ratio']:.1f}"
            f"; T={second_length}: x{result['second_ratio']:.1f} "
            f"({traces_second} trace)"
        )
    return results


def fit_length_schedule(steps):
    """Batch lengths for the `fit` experiment, and which ones are new."""
    first_length, second_length = new_length_steps(steps)
    return (
        [steps] * 5
        + [first_length]
        + [steps] * 3
        + [second_length]
        + [first_length] * 2
        + [steps] * 2
    )


def padded_dataset(lengths, batch, seed):
    """`tf.data` of variable-length sequences, `padded_batch`ed: T is None.

    The first sequence of batch `i` has length `lengths[i]` and the others
    are shorter, so each batch is padded to exactly `lengths[i]`. Sequences
    are cut from one array inside the pipeline: no Python runs per sample.
    """
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sizes = []
    for length in lengths:
        sizes.append(length)
        sizes.extend(rng.integers(length // 2 + 1, length + 1, size=batch - 1))
    longest = max(lengths)
    x = rng.standard_normal((len(sizes), longest, INPUT_WIDTH), np.float32)
    y = rng.standard_normal((len(sizes), longest, 1), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        (x, y, np.asarray(sizes, np.int32))
    )
    dataset = dataset.map(lambda xs, ys, n: (xs[:n], ys[:n]))
    dataset = dataset.padded_batch(batch)
    return dataset.prefetch(2)


def fixed_shape_dataset(steps, batch, batches, seed):
    """The control for `padded_dataset`: every shape known, T and batch."""
    import tensorflow as tf

    x, y = random_batch(np.random.default_rng(seed), batch * batches, steps)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    return dataset.batch(batch, drop_remainder=True).prefetch(2)


class BatchTimer(keras.callbacks.Callback):
    """Wall time of every `fit` batch and the trace count after it."""

    def __init__(self, counts):
        super().__init__()
        self.counts = counts
        self.records = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            float(logs["loss"])  # waits for the step
        seconds = time.perf_counter() - self._start
        self.records.append((seconds, self.counts["traces"]))


def fit_batch_times(variant, depth, steps, dataset, limit_s):
    """Trains a fresh model one epoch; returns its `BatchTimer` records."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    model = VARIANTS[variant].build(depth, UNITS, steps)
    timer = BatchTimer(count_traces(model))
    with time_limit(limit_s * 3):
        model.fit(
            dataset, epochs=1, verbose=0, shuffle=False, callbacks=[timer]
        )
    return timer.records


def measure_fit(variant, depth, steps, batch, limit_s):
    """`model.fit` on a padded `tf.data` pipeline whose T changes by batch.

    A second fresh model is fitted on fixed-shape batches at `steps`: the
    control that shows what the `None` shapes cost per step.
    """
    lengths = fit_length_schedule(steps)
    records = fit_batch_times(
        variant, depth, steps, padded_dataset(lengths, batch, SEED + 2), limit_s
    )
    seconds = [s for s, _ in records]
    traces = [t for _, t in records]
    first_length, second_length = new_length_steps(steps)
    steady = statistics.median(
        s for s, length in zip(seconds[1:], lengths[1:]) if length == steps
    )
    per_timestep = steady / steps

    def first_at(length):
        index = lengths.index(length)
        return seconds[index], seconds[index] / length / per_timestep

    first_new, first_new_ratio = first_at(first_length)
    second_new, second_new_ratio = first_at(second_length)
    repeat_index = lengths.index(first_length, lengths.index(second_length))

    fixed = fit_batch_times(
        variant,
        depth,
        steps,
        fixed_shape_dataset(steps, batch, FIT_FIXED_BATCHES, SEED + 3),
        limit_s,
    )
    fixed_steady = statistics.median(s for s, _ in fixed[1:])
    return {
        "variant": variant,
        "depth": depth,
        "steps": steps,
        "batch": batch,
        "lengths": lengths,
        "batch_s": seconds,
        "traces_after_batch": traces,
        "traces_first_batch": traces[0],
        "retraces_later": traces[-1] - traces[0],
        "first_batch_s": seconds[0],
        "steady_ms": steady * 1e3,
        "new_steps": first_length,
        "new_first_s": first_new,
        "new_first_ratio": first_new_ratio,
        "second_new_steps": second_length,
        "second_new_first_ratio": second_new_ratio,
        "repeat_ratio": seconds[repeat_index] / first_length / per_timestep,
        "fixed_shape_batch_s": [s for s, _ in fixed],
        "fixed_shape_steady_ms": fixed_steady * 1e3,
        "padded_vs_fixed": steady / fixed_steady,
    }


def memory_child(spec):
    """Runs in a fresh process: peak RSS of building and training one model."""
    baseline = peak_rss_mb()
    rng = np.random.default_rng(SEED)
    x, y = random_batch(rng, spec["batch"], spec["steps"])
    model = VARIANTS[spec["variant"]].build(spec["depth"], UNITS, spec["steps"])
    for _ in range(MEMORY_CHILD_STEPS):
        model.train_on_batch(x, y)
    result = {**spec, "baseline_mb": baseline, "peak_mb": peak_rss_mb()}
    print(RESULT_MARKER + json.dumps(result), flush=True)


def measure_memory(variant, depth, steps, batch):
    spec = {"variant": variant, "depth": depth, "steps": steps, "batch": batch}
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--backend",
        BACKEND,
        "--memory-child",
        json.dumps(spec),
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=MEMORY_CHILD_TIMEOUT_S,
            env={**os.environ, "KERAS_BACKEND": BACKEND},
        )
    except subprocess.TimeoutExpired:
        return {**spec, "note": f"skipped: over {MEMORY_CHILD_TIMEOUT_S:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER) :])
            result["delta_mb"] = result["peak_mb"] - result["baseline_mb"]
            return result
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
    return {**spec, "note": f"error (exit {done.returncode}): {tail[0][:200]}"}


# ------------------------------------------------------------------ output


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


def percent_of_gemm(gemm_gflops):
    def value(row):
        if row.get("gflops") is None or not gemm_gflops:
            return None
        return 100.0 * row["gflops"] / gemm_gflops

    return value


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
        ("note", lambda r: r.get("note", ""), 0),
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
    ("note", lambda r: r.get("note", ""), 0),
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
    ("note", lambda r: r.get("note", ""), 0),
]

MEMORY_COLUMNS = [
    ("variant", "variant", 0),
    ("depth", "depth", 0),
    ("T", "steps", 0),
    ("batch", "batch", 0),
    ("peak_MB", "peak_mb", 0),
    ("after_import_MB", "baseline_mb", 0),
    ("delta_MB", "delta_mb", 0),
    ("note", lambda r: r.get("note", ""), 0),
]


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not importable: no plot written.")
        return None
    plan = PLANS[results["config"]["plan"]]
    rows = [r for r in results["points"] if r.get("step_ms") is not None]
    batch = plan.batch
    reference_depth = plan.reference_depth
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
                    color=f"C{list(VARIANTS).index(variant)}",  # every panel
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
        for steps in plan.depth_sweep_steps:
            suffix = f" T={steps}" if len(plan.depth_sweep_steps) > 1 else ""
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
        f"{BACKEND}) — "
        f"{machine.get('cpu_model')}, {machine.get('cpus_usable')} CPUs",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_json(results, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)


# --------------------------------------------------------------------- main


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
        "--out",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out"),
        help="output folder (default: benchmarks/out/)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else tensorflow)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated names from {','.join(VARIANTS)} (default: "
        f"{','.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--rounds", type=int, help="steady rounds per point (default: by plan)"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(
            f"--variants: expected names from {', '.join(VARIANTS)}, got "
            f"{args.variants!r}."
        )
    if sum((args.quick, args.reference, args.tiny)) > 1:
        parser.error(
            "--quick, --reference: choose one plan, got more than one."
        )
    if args.rounds is not None and args.rounds < 1:
        parser.error(
            f"--rounds: expected a positive integer, got {args.rounds}."
        )
    args.variants = variants
    return args


def run_config(plan, variants):
    return {
        "plan": plan.name,
        "variants": variants,
        "variant_descriptions": {v: VARIANTS[v].description for v in variants},
        "units": UNITS,
        "input_width": INPUT_WIDTH,
        "memory": [MEMORY_DEPTH, MEMORY_WIDTH],
        "optimizer": "RMSprop",
        "loss": "mse",
        "unroll_max_steps": UNROLL_MAX_STEPS,
        "first_step_limit_s": plan.first_step_limit_s,
        "plan_details": asdict(plan),
        "jit_note": (
            None
            if IS_TENSORFLOW
            else "JAX: every variant is jitted; looped and looped_xla are "
            "the same model."
        ),
    }


def section_baseline_check(results):
    log("== baseline check (straightforward vs SuperloopCell, same weights)")
    try:
        difference = baselines.check_against_project_cell()
    except Exception as error:  # the package is edited concurrently
        results["baseline_check"] = {"note": error_note(error)}
        log(f"  {error_note(error)}")
        return
    matches = difference < BASELINE_TOLERANCE
    results["baseline_check"] = {
        "max_abs_difference": difference,
        "matches": matches,
    }
    verdict = "same function" if matches else "MISMATCH: the baseline differs"
    log(f"  max |difference| of outputs: {difference:.2e} ({verdict})")


def section_train_steps(results, plan, variants, save):
    results["points"] = []
    results["new_length"] = []
    timed_out = {}
    for depth, steps, batch, names in plan_points(plan, variants):
        log(f"== depth {depth}, T {steps}, batch {batch}")
        rows, live = run_group(depth, steps, batch, names, plan, timed_out)
        results["points"].extend(rows)
        if (depth, steps, batch) == tuple(plan.new_length_base) and live:
            log(f"== new lengths after warm-up at T {steps} (train_on_batch)")
            results["new_length"] = measure_new_lengths(
                live, rows, steps, batch
            )
        del live
        keras.backend.clear_session()
        save()


def section_fit(results, plan, variants):
    results["fit"] = []
    if not IS_TENSORFLOW:
        log("== model.fit on tf.data: TensorFlow backend only, skipped")
        return
    depth, _, batch = plan.new_length_base
    for variant in [v for v in plan.fit_variants if v in variants]:
        log(f"== model.fit on padded tf.data, {variant}, T {plan.fit_steps}")
        try:
            record = measure_fit(
                variant, depth, plan.fit_steps, batch, plan.first_step_limit_s
            )
            log(
                f"  traces {record['traces_first_batch']} in the first batch, "
                f"{record['retraces_later']} later; first batch "
                f"{record['first_batch_s']:.2f} s, steady "
                f"{record['steady_ms']:.1f} ms (fixed shapes "
                f"{record['fixed_shape_steady_ms']:.1f} ms), new T' "
                f"per-timestep x{record['new_first_ratio']:.2f}"
            )
        except Exception as error:  # report and go on with the others
            record = {"variant": variant, "note": error_note(error)}
            log(f"  {record['note']}")
        results["fit"].append(record)
    keras.backend.clear_session()


def section_memory(results, plan, variants):
    results["memory"] = []
    depth = plan.reference_depth
    for variant in [v for v in plan.memory_variants if v in variants]:
        for steps in plan.memory_steps:
            if VARIANTS[variant].fixed_steps and steps > UNROLL_MAX_STEPS:
                continue
            log(f"== peak RSS: {variant}, T {steps} (subprocess)")
            record = measure_memory(variant, depth, steps, plan.batch)
            results["memory"].append(record)
            log(
                f"  peak {format_value(record.get('peak_mb'), 0)} MB, "
                f"delta {format_value(record.get('delta_mb'), 0)} MB "
                f"{record.get('note', '')}"
            )


def print_summary(results, plot_path):
    machine = results["machine"]
    gemm_gflops = results["gemm"]["reference_gflops"]
    log("")
    log("== summary")
    log(
        f"machine: {machine['cpu_model']}, {machine['cpus_usable']}/"
        f"{machine['cpu_count']} CPUs, python {machine['python']}, keras "
        f"{machine['keras']}, {BACKEND} "
        f"{machine.get('tensorflow') or machine.get('jax')}, numpy "
        f"{machine['numpy']}; load average start "
        f"{machine['load_average_at_start']}, end "
        f"{machine['load_average_at_end']}"
    )
    load = machine["load_average_at_start"]
    cpus = machine["cpus_usable"] or machine["cpu_count"] or 1
    if load and load[0] > BUSY_LOAD_PER_CPU * cpus:
        log(
            f"NOTE: 1-minute load average was {load[0]:.2f} on {cpus} CPUs at "
            "the start: other work was running, timings are noisy."
        )
    log(
        f"GEMM reference: {gemm_gflops:.1f} GFLOP/s ({GEMM_SIZE}^2 float32 "
        "matmul, best of start and end)"
    )
    log(f"FLOPs: {FLOP_FORMULA}")
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


def main(argv=None):
    args = parse_args(argv)
    if args.memory_child:
        memory_child(json.loads(args.memory_child))
        return
    plan = PLANS[
        "tiny" if args.tiny
        else "quick" if args.quick
        else "reference" if args.reference
        else "full"
    ]
    if args.rounds:
        plan.rounds = args.rounds
    variants = args.variants
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "results.json")
    started = time.perf_counter()
    results = {
        "machine": machine_facts(),
        "config": run_config(plan, variants),
        "flop_formula": FLOP_FORMULA,
    }

    def save():
        write_json(results, json_path)

    log("== machine")
    for key, value in results["machine"].items():
        log(f"  {key}: {value}")
    section_baseline_check(results)

    log(f"== GEMM reference ({GEMM_SIZE}x{GEMM_SIZE} float32, keras.ops)")
    results["gemm"] = {"start": measure_gemm()}
    log(f"  {results['gemm']['start']['gflops_best']:.1f} GFLOP/s (best)")
    log("== process warm-up")
    results["warm_up"] = warm_up_process()
    log(f"  {results['warm_up']['seconds']:.1f} s")
    for variant, note in results["warm_up"]["errors"].items():
        log(f"  {variant}: {note}")
    save()

    section_train_steps(results, plan, variants, save)
    section_fit(results, plan, variants)
    save()
    section_memory(results, plan, variants)
    save()

    results["gemm"]["end"] = measure_gemm()
    gemm_gflops = max(
        results["gemm"]["start"]["gflops_best"],
        results["gemm"]["end"]["gflops_best"],
    )
    results["gemm"]["reference_gflops"] = gemm_gflops
    for row in results["points"]:
        row["percent_of_gemm"] = percent_of_gemm(gemm_gflops)(row)
    results["machine"]["load_average_at_end"] = load_average()
    results["elapsed_s"] = time.perf_counter() - started
    save()
    plot_path = plot(results, os.path.join(args.out, "benchmarks.png"))
    print_summary(results, plot_path)
    log(f"results: {json_path}")


if __name__ == "__main__":
    main()
