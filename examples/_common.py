"""Helpers shared by the example scripts: arguments, seeding, outputs.

Each example is a script with a `main(argv=None)` that returns its summary
dict; the pieces every script repeats (the common command-line options, the
accuracy metric, the optimizer, loading a saved superloop, the trace plot,
`summary.json`) live here.
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

import superloop_cell  # noqa: E402
from superloop_cell.plotting import plot_traces  # noqa: E402


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                     argparse.RawDescriptionHelpFormatter):
    """Shows every default, and the script's docstring as written."""


def make_parser(task, description):
    """An `ArgumentParser` with the options every example shares.

    `--seed`, `--out` (default `runs/<task>`) and `--verbose` (Keras' `fit`
    verbosity: 1 is the progress bar). `description` is shown as written.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=_HelpFormatter)
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed for data and weights")
    parser.add_argument("--out", default=os.path.join("runs", task),
                        help="output directory")
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2),
                        help="Keras fit verbosity (1: progress bar)")
    return parser


def prepare(args):
    """Seeds everything from `args.seed`, makes `args.out`, returns it."""
    keras.utils.set_random_seed(args.seed)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def rounded_accuracy(model, inputs, target):
    """Share of `model`'s scalar predictions that round to the target."""
    predicted = model.predict(inputs, batch_size=500, verbose=0)
    predicted = np.reshape(predicted, np.shape(target))
    return to_float(np.mean(np.round(predicted) == target))


class BestWeights:
    """The weights of the best-scoring epoch so far, to put back at the end.

    `offer(model, score, epoch)` keeps `model`'s weights when `score` (any
    comparable value; higher is better) beats the best so far, or equals it
    with `latest_among_equals`, and says whether it did; `score` and `epoch`
    are then the kept epoch's. `restore(model)` puts the kept weights back.
    """

    def __init__(self, latest_among_equals=False):
        self.latest_among_equals = latest_among_equals
        self.score = None
        self.epoch = None
        self._weights = None

    def offer(self, model, score, epoch):
        if self.score is not None and (
            score < self.score
            or (score == self.score and not self.latest_among_equals)
        ):
            return False
        self.score, self.epoch = score, epoch
        self._weights = model.get_weights()
        return True

    def restore(self, model):
        if self._weights is not None:
            model.set_weights(self._weights)


class RoundedAccuracy(keras.callbacks.Callback):
    """Puts `val_rounded_accuracy` in the logs at the end of every epoch.

    A callback rather than a compiled metric, so that the saved model needs
    nothing from these scripts to load (`keras.saving.load_model` after
    `import superloop_cell`).

    Args:
        inputs: The held-out inputs.
        target: Their integer targets.
        keep_best: Whether to remember the weights of the epoch with the
            best accuracy (`best_accuracy`, `best_epoch`, and
            `best_seconds`, the time from construction to the end of that
            epoch); `restore_best()` puts them back. The held-out set must
            then be a validation set, not the test set the result is
            reported on.
        model: The model to check, if not the one being trained (e.g. one
            that shares its layers but answers differently). Its weights
            are the ones kept and restored.
    """

    def __init__(self, inputs, target, keep_best=False, model=None):
        super().__init__()
        self.checked = model
        self.inputs = inputs
        self.target = target
        self.keep_best = keep_best
        self.best_seconds = None
        self._best = BestWeights()
        self._clock = Stopwatch()

    @property
    def best_accuracy(self):
        return self._best.score

    @property
    def best_epoch(self):
        return self._best.epoch

    @property
    def _checked_model(self):
        return self.checked or self.model

    def on_epoch_end(self, epoch, logs=None):
        model = self._checked_model
        accuracy = rounded_accuracy(model, self.inputs, self.target)
        if logs is not None:
            logs["val_rounded_accuracy"] = accuracy
        if self.keep_best and self._best.offer(model, accuracy, epoch):
            self.best_seconds = self._clock.seconds()

    def restore_best(self):
        """Sets the model's weights to the best epoch's, if one was kept."""
        self._best.restore(self._checked_model)


def compile_with_adam(model, loss, learning_rate, jit_compile="auto"):
    """Compiles `model` with Adam, gradients clipped to norm 1 (as every
    example trains); `jit_compile` as for `keras.Model.compile`."""
    model.compile(keras.optimizers.Adam(learning_rate, clipnorm=1.0), loss,
                  jit_compile=jit_compile)


def load_superloop(path):
    """`(model, cell)`: a `model.keras` an example saved, and the one
    `SuperloopCell` it runs (to inspect, or to build a model that goes on
    training it)."""
    model = keras.saving.load_model(path)
    return model, superloop_cell.find_superloop_cell(model)


def write_traces(cell, sequences, contexts, path, title):
    """Plots the traces of the first sample of `sequences` to `path`."""
    _, traces = superloop_cell.run_with_traces(cell, sequences, contexts)
    return plot_traces(traces, path, title=title,
                       axis_labels=superloop_cell.trace_axis_labels(cell))


class Stopwatch:
    """Wall time since construction, in seconds."""

    def __init__(self):
        self.start = time.perf_counter()

    def seconds(self):
        return round(time.perf_counter() - self.start, 1)


def finish(out, summary):
    """Writes `summary.json` in `out`, prints the summary, returns it."""
    path = out / "summary.json"
    summary = {**summary, "backend": keras.backend.backend(), "versions": {
        "superloop_cell": superloop_cell.__version__,
        "keras": keras.__version__,
    }, "files": {
        "model": str(out / "model.keras"),
        "traces": str(out / "traces.png"),
        "summary": str(path),
    }}
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print()
    print(f"== {summary['task']} ==")
    for key, value in summary.items():
        if key in ("task", "files", "config", "versions"):
            continue
        print(f"  {key}: {value}")
    print("  files: " + ", ".join(summary["files"].values()))
    return summary


def to_float(value):
    """A NumPy or Keras scalar as a rounded Python float, for JSON."""
    return round(float(np.asarray(value)), 4)
