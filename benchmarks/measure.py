"""Measurements: timing, trace and compile counting, peak memory, GEMM.

Import after `benchmarks.backend.select` (this module imports Keras). The
sweep's measurements (`run_group`, `measure_new_lengths`, `measure_fit`,
`measure_memory`) are described in benchmarks/README.md, *What is measured*.
"""

import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time

import keras
import numpy as np
from keras import ops

from benchmarks import backend, models

GEMM_SIZE = 2048
GEMM_REPEATS = 5
FIRST_STEP_LIMIT_S = 120.0
CHILD_TIMEOUT_S = 300.0
MEMORY_CHILD_STEPS = 3
FIT_FIXED_BATCHES = 8
SEED = 0
BUSY_LOAD_PER_CPU = 0.25  # 1-minute load at start above this: timings suspect
RESULT_MARKER = "CHILD_RESULT "
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(message):
    print(message, flush=True)


def error_note(error):
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"error: {type(error).__name__}: {first_line}"[:200]


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
    On JAX every trace is followed by one XLA compilation. Install before
    the first train call; returns `{"traces": n}`, updated in place.
    """
    counts = {"traces": 0}
    train_step = model.train_step

    def counting_train_step(*args, **kwargs):
        counts["traces"] += 1
        return train_step(*args, **kwargs)

    model.train_step = counting_train_step
    return counts


class JaxCompileTimer:
    """Counts JAX's backend (XLA) compilations and sums their seconds.

    Every compilation reports an event to `jax.monitoring`, also the small
    ones of ops run eagerly (initialisers, the optimizer's build), so `count`
    is more than the train step's compilations; `long_count` counts those of
    at least `long_s` seconds. Use as a context manager; on TensorFlow it
    records nothing.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self, long_s=0.5):
        self.long_s = long_s
        self.count = 0
        self.long_count = 0
        self.seconds = 0.0
        self._listening = False

    def _listener(self, event, duration, **kwargs):
        if event == self.EVENT and self._listening:
            self.count += 1
            self.seconds += duration
            self.long_count += duration >= self.long_s

    def __enter__(self):
        if not backend.is_tensorflow():
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(
                self._listener
            )
            self._listening = True
        return self

    def __exit__(self, *exc):
        if self._listening:
            import jax.monitoring

            jax.monitoring.unregister_event_duration_listener(self._listener)
            self._listening = False

    def as_dict(self):
        return {
            "count": self.count,
            "long_count": self.long_count,
            "long_s": self.long_s,
            "seconds": self.seconds,
        }


def random_batch(rng, batch, steps):
    x = rng.standard_normal((batch, steps, models.INPUT_WIDTH), np.float32)
    y = rng.standard_normal((batch, steps, 1), np.float32)
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


def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB.

    Linux: `VmHWM` of /proc/self/status, the kernel's high-water mark, which
    starts afresh at `exec` (`ru_maxrss` keeps the forking parent's peak
    across `fork` + `exec`). Elsewhere `ru_maxrss` (macOS counts bytes,
    Linux kibibytes).
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


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def memory_total_gb():
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
        "cpu_model": cpu_model(),
        "memory_total_gb": memory_total_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": backend.active(),
        "numpy": np.__version__,
        "load_average_at_start": load_average(),
    }
    if backend.is_tensorflow():
        facts["tensorflow"] = package_version("tensorflow")
        # TensorFlow's thread pools: one thread per core each unless these
        # variables (read when TensorFlow starts) say otherwise.
        for name in ("TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS"):
            facts[name] = os.environ.get(name, "default")
    else:
        facts["jax"] = package_version("jax")
        facts["jaxlib"] = package_version("jaxlib")
    return facts


def busy_note(facts):
    """A warning line if the load at the start says other work was running."""
    load = facts.get("load_average_at_start")
    cpus = facts.get("cpus_usable") or facts.get("cpu_count") or 1
    if load and load[0] > BUSY_LOAD_PER_CPU * cpus:
        return (
            f"NOTE: 1-minute load average was {load[0]:.2f} on {cpus} CPUs at "
            "the start: other work was running, timings are noisy."
        )
    return None


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
            models.VARIANTS[variant].build(3, 4, 4).train_on_batch(x, y)
        except Exception as error:  # measured (and reported) again later
            notes[variant] = error_note(error)
    keras.backend.clear_session()
    return {"seconds": time.perf_counter() - start, "errors": notes}


def first_step(build, depth, steps, x, y, limit_s, prebuild=False):
    """Builds a fresh model and times build + trace/compile + first step.

    Args:
        build: `(depth, units, steps) -> compiled keras.Model`.
        depth, steps: passed to `build` (units: `models.UNITS`).
        x, y: the batch of the first step.
        limit_s: a first step over this raises `FirstStepTimeout`.
        prebuild: create the optimizer's variables before the first step
            (`benchmarks/first_step.py`), which spares Keras a second trace.

    Returns:
        `(model, trace_counts, seconds)`.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    start = time.perf_counter()
    try:
        with time_limit(limit_s):
            model = build(depth, models.UNITS, steps)
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


def skip_reason(variant, depth, steps, timed_out):
    if models.VARIANTS[variant].fixed_steps and steps > models.UNROLL_MAX_STEPS:
        return f"not run: unroll restricted to T <= {models.UNROLL_MAX_STEPS}"
    for bad_depth, bad_steps in timed_out.get(variant, []):
        if depth >= bad_depth and steps >= bad_steps:
            return (
                f"skipped: first step exceeded the limit at depth "
                f"{bad_depth}, T {bad_steps}"
            )
    return None


def run_group(
    depth, steps, batch, variants, *, warmup, rounds, limit_s, timed_out
):
    """First-step and interleaved steady step times of one (depth, T, batch).

    `timed_out` (`{variant: [(depth, T)]}`) records first steps over
    `limit_s`, and skips that variant at larger points; updated in place.

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
                models.VARIANTS[variant].build, depth, steps, x, y, limit_s
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
        if variant == "looped_xla" and not backend.is_tensorflow():
            row["note"] = "JAX: always jitted, same model as looped"
        live[variant] = (model, counts)
        log(f"  {variant:16s} first step {seconds:7.2f} s")

    for model, _ in live.values():
        for _ in range(warmup):
            model.train_on_batch(x, y)

    order = list(live)
    times = {variant: [] for variant in order}
    for round_index in range(rounds):
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
        flops = models.variant_flops(variant, depth, steps, batch)
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
        if models.VARIANTS[variant].fixed_steps:
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
    x = rng.standard_normal(
        (len(sizes), longest, models.INPUT_WIDTH), np.float32
    )
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
    """Wall time of every `fit` batch and the trace count after it.

    `records` holds `(seconds, traces)` per batch; `counts` is what
    `count_traces` returned for the model.
    """

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
    model = models.VARIANTS[variant].build(depth, models.UNITS, steps)
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


# ------------------------------------------------------------- subprocesses


def emit_child_result(result):
    """Prints a child process's result where `run_child` finds it."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_child(module, arguments, timeout_s=CHILD_TIMEOUT_S):
    """Runs `python -m module --backend B *arguments` in a fresh process.

    The child prints its result with `emit_child_result`. Returns that dict,
    or `{"note": ...}` when the child timed out or failed.
    """
    name = backend.active()
    command = [sys.executable, "-m", module, "--backend", name, *arguments]
    path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "KERAS_BACKEND": name,
        "PYTHONPATH": REPO_ROOT + (os.pathsep + path if path else ""),
    }
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired:
        return {"note": f"skipped: over {timeout_s:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
    return {"note": f"error (exit {done.returncode}): {tail[0][:200]}"}


def memory_child(spec):
    """In a fresh process: peak RSS of building and training one model."""
    baseline = peak_rss_mb()
    rng = np.random.default_rng(SEED)
    x, y = random_batch(rng, spec["batch"], spec["steps"])
    build = models.VARIANTS[spec["variant"]].build
    model = build(spec["depth"], models.UNITS, spec["steps"])
    for _ in range(MEMORY_CHILD_STEPS):
        model.train_on_batch(x, y)
    emit_child_result(
        {**spec, "baseline_mb": baseline, "peak_mb": peak_rss_mb()}
    )


def measure_memory(variant, depth, steps, batch):
    """Peak RSS of `memory_child` for one point, in a fresh subprocess."""
    spec = {"variant": variant, "depth": depth, "steps": steps, "batch": batch}
    result = run_child("benchmarks.run", ["--memory-child", json.dumps(spec)])
    result = {**spec, **result}
    if "peak_mb" in result:
        result["delta_mb"] = result["peak_mb"] - result["baseline_mb"]
    return result
