"""Timing, trace counting, peak memory, machine facts, child processes, tables.

Nothing here imports Keras at import time: `run_child` and the table helpers
serve parent processes that run no model themselves.
"""

import json
import os
import platform
import statistics
import subprocess
import sys
import time

SEED = 0
BUSY_LOAD_PER_CPU = 0.25  # 1-minute load at start above this: timings suspect
RESULT_MARKER = "CHILD_RESULT "
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "benchmarks", "out")


def log(message=""):
    print(message, flush=True)


def error_note(error):
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"error: {type(error).__name__}: {first_line}"[:200]


def count_traces(model):
    """Counts how often the model's train step is traced.

    The train step's Python body runs once per trace (TensorFlow's
    `tf.function`, JAX's `jit`), never per executed step; on torch without
    compilation it runs every step. Install before the first train call;
    returns `{"traces": n}`, updated in place.
    """
    counts = {"traces": 0}
    train_step = model.train_step

    def counting_train_step(*args, **kwargs):
        counts["traces"] += 1
        return train_step(*args, **kwargs)

    model.train_step = counting_train_step
    return counts


class JaxCompileTimer:
    """Sums the seconds of JAX's XLA compilations (`jax.monitoring` events).

    Every compilation counts, also the small ones of eager ops. A context
    manager; records nothing on other backends.
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count, self.seconds, self._listening = 0, 0.0, False

    def _listener(self, event, duration, **kwargs):
        if event == self.EVENT and self._listening:
            self.count += 1
            self.seconds += duration

    def __enter__(self):
        import keras

        if keras.backend.backend() == "jax":
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(
                self._listener)
            self._listening = True
        return self

    def __exit__(self, *exc):
        if self._listening:
            import jax.monitoring

            jax.monitoring.unregister_event_duration_listener(self._listener)
            self._listening = False


def random_batch(rng, batch, steps, width=2):
    import numpy as np

    x = rng.standard_normal((batch, steps, width), np.float32)
    y = rng.standard_normal((batch, steps, 1), np.float32)
    return x, y


def timed_step(model, x, y):
    start = time.perf_counter()
    model.train_on_batch(x, y)  # returns NumPy values: the step has finished
    return time.perf_counter() - start


def summarize(times):
    """Median, quartiles and count of `times` (seconds)."""
    if len(times) > 1:
        p25, _, p75 = statistics.quantiles(times, n=4)
    else:
        p25 = p75 = times[0]
    return {"median_s": statistics.median(times), "p25_s": p25, "p75_s": p75,
            "n": len(times)}


def interleaved(functions, rounds, per_round=1):
    """Times `functions` (`{name: f}`) in turn, `rounds` times.

    Round `i` starts `i` further along the list, so drift and position
    effects hit every function alike. Returns `{name: [seconds]}`, one
    entry per round (the median of `per_round` calls).
    """
    names = list(functions)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % max(len(names), 1)
        for name in names[shift:] + names[:shift]:
            calls = []
            for _ in range(per_round):
                start = time.perf_counter()
                functions[name]()
                calls.append(time.perf_counter() - start)
            times[name].append(statistics.median(calls))
    return times


def peak_rss_mb():
    """Peak resident set size of this process so far, MiB (`VmHWM`).

    `VmHWM` starts afresh at `exec`; `ru_maxrss` would keep a forking
    parent's peak. Elsewhere than Linux, `ru_maxrss`.
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_facts():
    """CPU, versions and the load at the start; imports Keras."""
    import importlib.metadata

    import keras

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    name = keras.backend.backend()
    return {
        "cpu_model": cpu,
        "cpus_usable": (len(os.sched_getaffinity(0))
                        if hasattr(os, "sched_getaffinity")
                        else os.cpu_count()),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "backend": name,
        "backend_version": version(name),
        "load_average_at_start": load_average(),
    }


def machine_line(facts):
    return (
        f"machine: {facts['cpu_model']}, {facts['cpus_usable']} CPUs, python "
        f"{facts['python']}, keras {facts['keras']}, {facts['backend']} "
        f"{facts['backend_version']}; load average start "
        f"{facts['load_average_at_start']}, end "
        f"{facts.get('load_average_at_end')}"
    )


def busy_note(facts):
    """A warning line if the load at the start says other work was running."""
    load = facts.get("load_average_at_start")
    cpus = facts.get("cpus_usable") or 1
    if load and load[0] > BUSY_LOAD_PER_CPU * cpus:
        return (f"NOTE: 1-minute load average was {load[0]:.2f} on {cpus} "
                "CPUs at the start: other work was running, timings are "
                "noisy; read the ratios.")
    return None


# ------------------------------------------------------------ child processes


def emit_child_result(result):
    """Prints a child process's result where `run_child` finds it."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


def child_command(module, backend_name, arguments):
    return [sys.executable, "-m", module, "--backend", backend_name,
            *arguments]


def child_env(backend_name, first_path=REPO_ROOT):
    """The environment of a child: its backend; `first_path` first on the
    module path (a revision's package before the working tree's)."""
    paths = [first_path, REPO_ROOT, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "KERAS_BACKEND": backend_name,
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in paths
                                                         if p))}


def run_child(module, backend_name, arguments, timeout_s):
    """Runs `python -m module --backend B *arguments` in a fresh process.

    The child's output is echoed, indented, as it comes; it prints its result
    with `emit_child_result`. Returns that dict, or `{"note": ...}` when the
    child timed out or failed.
    """
    import threading

    child = subprocess.Popen(
        child_command(module, backend_name, arguments),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=child_env(backend_name), cwd=REPO_ROOT)
    timer = threading.Timer(timeout_s, child.kill)
    timer.start()
    result, last = None, "?"
    for line in child.stdout:
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
        elif line.strip():
            last = line.strip()
            log("    " + line.rstrip())
    child.wait()
    timed_out = not timer.is_alive()
    timer.cancel()
    if result is not None:
        return result
    if timed_out:
        return {"note": f"skipped: over {timeout_s:.0f} s"}
    return {"note": f"error (exit {child.returncode}): {last[:200]}"}


# --------------------------------------------------------------------- tables


def format_value(value, digits):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows, columns, markdown=False):
    """A text (or Markdown) table; `columns`: [(header, key or f, digits)]."""
    cells = [[format_value(key(row) if callable(key) else row.get(key),
                           digits)[:90]
              for _, key, digits in columns] for row in rows]
    headers = [header for header, _, _ in columns]
    if markdown:
        lines = [headers, ["---"] * len(headers)] + cells
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max([len(h)] + [len(line[i]) for line in cells])
              for i, h in enumerate(headers)]

    def justify(line):
        return "  ".join(text.ljust(width) if i == 0 or i == len(line) - 1
                         else text.rjust(width)
                         for i, (text, width) in enumerate(zip(line, widths))
                         ).rstrip()

    out = [justify(headers), justify(["-" * w for w in widths])]
    return "\n".join(out + [justify(line) for line in cells])


def write_json(results, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
