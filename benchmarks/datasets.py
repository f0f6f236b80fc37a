"""Mixed-length training data for `benchmarks.mixed_lengths`.

Both settings are `superloop_cell.BucketedSequences`; they differ only in
their boundaries. Import after `benchmarks.backend.select` (imports Keras).
"""

import time

import keras
import numpy as np

from benchmarks import models
from superloop_cell import BucketedSequences


def sequences(samples, shortest, longest, seed):
    """`samples` random sequences, lengths uniform on [shortest, longest].

    Returns:
        `(xs, ys)`: lists of `(length, models.INPUT_WIDTH)` inputs and
        `(length, 1)` targets, float32.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(shortest, longest + 1, size=samples)
    xs = [rng.standard_normal((n, models.INPUT_WIDTH)).astype("float32")
          for n in lengths]
    ys = [rng.standard_normal((n, 1)).astype("float32") for n in lengths]
    return xs, ys


def batch_maxima(lengths, batch_size):
    """The longest length of each batch of the length-sorted sequences.

    As boundaries of `BucketedSequences`, they give the batching one writes
    without buckets: sort by length, cut into batches, pad each to its own
    longest sequence. Least padding, but nearly every batch has a length of
    its own. (Where equal lengths straddle two batches, a bucket holds more
    than `batch_size` sequences and has a second, partly filled batch.)
    """
    ordered = np.sort(np.asarray(lengths))
    return tuple(sorted({int(ordered[min(i + batch_size, len(ordered)) - 1])
                         for i in range(0, len(ordered), batch_size)}))


def batches(xs, ys, batch_size, seed, buckets):
    """`BucketedSequences` with its default boundaries (powers of two) when
    `buckets`, else with `batch_maxima`."""
    boundaries = (None if buckets else
                  batch_maxima([len(x) for x in xs], batch_size))
    return BucketedSequences(xs, ys, batch_size=batch_size,
                             boundaries=boundaries, seed=seed)


def batch_length(data, index):
    """The padded length of batch `index`: its bucket's boundary."""
    longest = data.lengths[data.batch_indices(index)].max()
    return int(data.boundaries[np.searchsorted(data.boundaries, longest)])


class BatchLengths(keras.callbacks.Callback):
    """The padded length of every batch `fit` trains on, in order.

    Read while the epoch runs: the dataset draws a new order at
    `on_epoch_end`, after the epoch.
    """

    def __init__(self, data):
        super().__init__()
        self.data = data
        self.lengths = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lengths.append(batch_length(self.data, batch))


class BatchTimer(keras.callbacks.Callback):
    """Wall time of every `fit` batch and the trace count after it.

    `records` holds `(seconds, traces)` per batch; `counts` is what
    `measure.count_traces` returned for the model.
    """

    def __init__(self, counts):
        super().__init__()
        self.counts, self.records, self._start = counts, [], None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            float(logs["loss"])  # waits for the step
        self.records.append((time.perf_counter() - self._start,
                             self.counts["traces"]))
