"""Helpers shared by the example scripts: arguments, seeding, outputs.

Each example is a script with a `main(argv=None)` that returns its summary
dict; the pieces every script repeats (the common command-line options, the
accuracy metric, the trace plot, `summary.json`) live here.
"""

import argparse
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

import superloop_cell  # noqa: E402
from superloop_cell.plotting import plot_traces  # noqa: E402


def make_parser(task, description):
    """An `ArgumentParser` with the options every example shares.

    `--seed`, `--out` (default `runs/<task>`) and `--verbose` (Keras' `fit`
    verbosity: 1 is the progress bar).
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed for data and weights")
    parser.add_argument("--out", default=os.path.join("runs", task),
                        help="output directory")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras fit verbosity (1: progress bar)")
    return parser


def prepare(args):
    """Seeds everything from `args.seed`; makes `args.out`; returns its path."""
    keras.utils.set_random_seed(args.seed)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


@keras.saving.register_keras_serializable(package="examples")
def rounded_accuracy(y_true, y_pred):
    """Share of predictions that round to the integer target."""
    y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), ops.shape(y_pred))
    return ops.mean(ops.cast(ops.equal(ops.round(y_pred), y_true), "float32"))


def write_traces(cell, sequences, contexts, path, title):
    """Plots the traces of the first sample of `sequences` to `path`."""
    _, traces = superloop_cell.run_with_traces(cell, sequences, contexts)
    return plot_traces(traces, path, title=title)


class Stopwatch:
    """Wall time since construction, in seconds."""

    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self):
        return round(time.perf_counter() - self.start, 1)


def finish(out, summary):
    """Writes `summary.json` in `out`, prints the summary, returns it."""
    path = out / "summary.json"
    summary = {**summary, "files": {
        "model": str(out / "model.keras"),
        "traces": str(out / "traces.png"),
        "summary": str(path),
    }}
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(f"== {summary['task']} ==")
    for key, value in summary.items():
        if key in ("task", "files", "config"):
            continue
        print(f"  {key}: {value}")
    print("  files: " + ", ".join(summary["files"].values()))
    return summary


def to_float(value):
    """A NumPy or Keras scalar as a rounded Python float, for JSON."""
    return round(float(np.asarray(value)), 4)
