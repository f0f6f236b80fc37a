"""What the superloop does inside, logged to TensorBoard while it trains.

`TraceImages` runs the model's `SuperloopCell` on a fixed probe batch every
few epochs (through `superloop_cell.run_with_traces`, on a traced twin that
is made once and gets fresh weights each time) and logs:

* images: one heatmap per trace wider than one value, step on x and slot on
  y (slot 0 at the bottom) — `attention/weights` (positions),
  `register_memory/store` and `/recall` (registers), `neural_stack/strengths`
  and `/read_weights` (stack slots) — plus `sgu/gate_mean` (the mean SGU gate
  `f` of every layer, layer 0 at the bottom);
* histograms: every SGU layer's gate values (`sgu_0/gate`...);
* scalars: the mean over batch and steps of every one-value trace
  (`attention/position_mean`, `neural_stack/push_mean`...) and of every
  SGU layer's gate (`sgu_0/gate_mean`).

Summaries are written with `tf.summary` (TensorFlow is needed for writing,
whatever the Keras backend).
"""

import os

import keras
import numpy as np
import tensorflow as tf

from superloop_cell.superloop import SuperloopCell
from superloop_cell.traces import (GATE, find_superloop_cell, group_traces,
                                   run_with_traces, trace_axis_labels,
                                   traced_copy)

# Viridis at 0, 1/4, 1/2, 3/4 and 1 (matplotlib's anchors, rounded).
_VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
     [253, 231, 37]], dtype=np.float64
)
# Heatmaps are scaled up to at least this many pixels on each axis, so that
# TensorBoard shows short sequences and few slots at a readable size.
MIN_IMAGE_WIDTH = 320
MIN_IMAGE_HEIGHT = 96
_GATE_MEANS = "sgu/gate_mean"


def colorize(values, vmin=None, vmax=None):
    """Maps an array to viridis RGB: `(...)` floats → `(..., 3)` uint8.

    Args:
        values: Array of floats.
        vmin, vmax: The values drawn darkest and brightest. Default: 0 and
            1 when every value lies in [0, 1] (weights, gates), else the
            array's min and max.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if vmin is None or vmax is None:
        in_unit = finite.size and finite.min() >= 0.0 and finite.max() <= 1.0
        low, high = ((0.0, 1.0) if in_unit or not finite.size
                     else (finite.min(), finite.max()))
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    scaled = (values - vmin) / max(vmax - vmin, 1e-12)
    scaled = np.nan_to_num(np.clip(scaled, 0.0, 1.0)) * (len(_VIRIDIS) - 1)
    low = np.minimum(np.floor(scaled).astype(int), len(_VIRIDIS) - 2)
    frac = (scaled - low)[..., None]
    rgb = _VIRIDIS[low] * (1.0 - frac) + _VIRIDIS[low + 1] * frac
    return np.round(rgb).astype(np.uint8)


def heatmap(matrix, vmin=None, vmax=None):
    """A `(slots, steps)` matrix as an RGB image, slot 0 at the bottom.

    Each value becomes a block of pixels, so that the image is at least
    `MIN_IMAGE_WIDTH` × `MIN_IMAGE_HEIGHT` pixels.

    Returns:
        `(height, width, 3)` uint8, `height = slots·block_h`,
        `width = steps·block_w`.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(
            "Received an invalid value for argument `matrix`: expected a "
            f"non-empty (slots, steps) array, got shape {matrix.shape}."
        )
    slots, steps = matrix.shape
    block_w = -(-MIN_IMAGE_WIDTH // steps)  # ceil
    block_h = -(-MIN_IMAGE_HEIGHT // slots)
    rgb = colorize(matrix[::-1], vmin, vmax)
    return np.repeat(np.repeat(rgb, block_h, axis=0), block_w, axis=1)


def trace_summaries(traces, samples=3, axis_labels=None):
    """What `TraceImages` logs, computed from traces, as plain arrays.

    Args:
        traces: Dict from `run_with_traces`: `(batch, steps, width)` arrays.
        samples: How many batch rows get images. Default 3.
        axis_labels: Optional dict from trace name to what its heatmap's
            rows are, as for `superloop_cell.group_traces`.

    Returns:
        `(images, histograms, scalars, row_labels)`: dicts from tag to
        `(samples, height, width, 3)` uint8, to the values, to a float, and
        from each image's tag to what its rows are.
    """
    images, histograms, scalars, row_labels = {}, {}, {}, {}
    gates, systems = group_traces(
        {k: np.asarray(v, dtype=np.float32) for k, v in traces.items()},
        axis_labels,
    )
    for stage, gate in gates.items():
        tag = f"{stage}/{GATE}"
        histograms[tag] = gate.reshape(-1)
        scalars[tag + "_mean"] = float(gate.mean())
    if gates:
        # (samples, layers, steps): the mean gate of every layer.
        per_layer = np.stack(
            [g[:samples].mean(axis=-1) for g in gates.values()], axis=1
        )
        images[_GATE_MEANS] = np.stack([heatmap(s) for s in per_layer])
        row_labels[_GATE_MEANS] = "SGU layer"
    for name, group in systems.items():
        for key, line in group.lines.items():
            scalars[f"{name}/{key}_mean"] = float(line.mean())
        for key, value in group.heatmaps.items():
            tag = f"{name}/{key}"
            images[tag] = np.stack([heatmap(s.T) for s in value[:samples]])
            row_labels[tag] = group.row_labels[key]
    return images, histograms, scalars, row_labels


class TraceImages(keras.callbacks.Callback):
    """Logs a superloop's traces on a fixed probe batch every N epochs.

    Logs once before training (step 0) and after every `every_n_epochs`-th
    epoch (step = epochs done). See the module docstring for the tags.

    Args:
        logdir: The run directory the event file is written to.
        sequences: The probe batch, `(batch, steps, features)`: what the
            `RNN` layer running the cell receives (not the model's input
            when layers come before the RNN).
        contexts: The probe's per-sample contexts (the attention data), as
            for `superloop_cell.initial_state`. Default none.
        mask: Optional `(batch, steps)` boolean mask of the probe.
        cell: The `SuperloopCell` to trace. Default: the one found in the
            model (it must hold exactly one).
        every_n_epochs: Default 1.
        samples: How many probe rows get images. Default 3.

    Example:

    ```python
    model.fit(x, y, epochs=10, callbacks=[
        TraceImages("logs/train", x_probe, contexts=data_probe)])
    ```
    """

    def __init__(self, logdir, sequences, contexts=(), mask=None, cell=None,
                 every_n_epochs=1, samples=3):
        super().__init__()
        if not (isinstance(every_n_epochs, int) and every_n_epochs >= 1):
            raise ValueError(
                "Received an invalid value for argument `every_n_epochs`: "
                f"expected a positive int, got {every_n_epochs!r}."
            )
        if not (isinstance(samples, int) and samples >= 1):
            raise ValueError(
                "Received an invalid value for argument `samples`: expected "
                f"a positive int, got {samples!r}."
            )
        if cell is not None and not isinstance(cell, SuperloopCell):
            raise TypeError(
                "Received an invalid value for argument `cell`: expected a "
                f"SuperloopCell or None, got {cell!r}."
            )
        self.logdir = os.fspath(logdir)
        self.sequences = np.asarray(sequences)
        if self.sequences.ndim != 3:
            raise ValueError(
                "Received an invalid value for argument `sequences`: "
                "expected shape (batch, steps, features), got "
                f"{self.sequences.shape}."
            )
        self.contexts = contexts
        self.mask = mask
        self.cell = cell
        self.every_n_epochs = every_n_epochs
        self.samples = samples
        self._twin = None
        self._axis_labels = None
        self._writer = None
        self._logged_initial = False

    def on_train_begin(self, logs=None):
        if self.cell is None:
            self.cell = find_superloop_cell(self.model)
        if self._twin is None:
            self._twin = traced_copy(self.cell, self.sequences.shape[-1])
            self._axis_labels = trace_axis_labels(self.cell)
        self._writer = tf.summary.create_file_writer(self.logdir)
        if not self._logged_initial:
            self.log(step=0)
            self._logged_initial = True

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs == 0:
            self.log(step=epoch + 1)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def log(self, step):
        """Runs the probe batch now and writes its summaries at `step`."""
        _, traces = run_with_traces(self.cell, self.sequences, self.contexts,
                                    mask=self.mask, twin=self._twin)
        images, histograms, scalars, row_labels = trace_summaries(
            traces, self.samples, self._axis_labels)
        writer = self._writer or tf.summary.create_file_writer(self.logdir)
        with writer.as_default():
            for tag, image in images.items():
                tf.summary.image(tag, image, step=step,
                                 max_outputs=len(image),
                                 description=_describe(row_labels[tag]))
            for tag, values in histograms.items():
                tf.summary.histogram(tag, values, step=step)
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value, step=step)
        writer.flush()


def _describe(rows):
    return (f"One probe sample per image: step on x, {rows} on y (0 at the "
            "bottom); viridis, dark = 0, yellow = 1.")
