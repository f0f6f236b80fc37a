"""Mixed-length training data for `benchmarks.mixed_lengths`.

Import after `benchmarks.backend.select` (this module imports Keras).
"""

import keras
import numpy as np

from benchmarks import models


def sequences(samples, shortest, longest, seed):
    """`samples` random sequences, lengths uniform on [shortest, longest].

    Returns:
        `(xs, ys)`: lists of `(length, models.INPUT_WIDTH)` inputs and
        `(length, 1)` targets, float32.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(shortest, longest + 1, size=samples)
    xs = [
        rng.standard_normal((n, models.INPUT_WIDTH)).astype("float32")
        for n in lengths
    ]
    ys = [rng.standard_normal((n, 1)).astype("float32") for n in lengths]
    return xs, ys


class PaddedBatches(keras.utils.PyDataset):
    """Batches of length-sorted sequences, each padded to its longest.

    The batching one writes without buckets: sort by length, cut into
    batches of `batch_size`, shuffle the batches (with `seed`), pad each to
    its own longest sequence. Padding is least, but almost every batch has a
    length of its own. Yields `(x, y, sample_weight)` like
    `superloop_cell.data.BucketedSequences` (the same weights: `scale` at
    real steps, 0 at padding, so the loss is the same); the first two
    batches differ in length, so TensorFlow's input signature leaves T
    `None`.

    Args:
        inputs, targets: lists of `(length, features)` and `(length, 1)`
            arrays.
        batch_size: rows per batch (the last batch may have fewer).
        seed: the shuffle's seed.
    """

    def __init__(self, inputs, targets, batch_size, seed=0, **kwargs):
        super().__init__(**kwargs)
        self._inputs, self._targets = inputs, targets
        self.lengths = np.array([len(x) for x in inputs])
        order = np.argsort(self.lengths, kind="stable")
        groups = [
            order[i:i + batch_size] for i in range(0, len(order), batch_size)
        ]
        rng = np.random.default_rng(seed)
        groups = [groups[i] for i in rng.permutation(len(groups))]
        self._groups = groups
        if len(groups) >= 2 and self.batch_length(1) == self.batch_length(0):
            for j in range(2, len(groups)):
                if self.batch_length(j) != self.batch_length(0):
                    groups[1], groups[j] = groups[j], groups[1]
                    break

    def __len__(self):
        return len(self._groups)

    def batch_length(self, index):
        """The padded length of batch `index`."""
        return int(self.lengths[self._groups[index]].max())

    def __getitem__(self, index):
        members = self._groups[index]
        length = self.batch_length(index)
        features = self._inputs[0].shape[-1]
        x = np.zeros((len(members), length, features), "float32")
        y = np.zeros((len(members), length, 1), "float32")
        weight = np.zeros((len(members), length), "float64")
        for row, i in enumerate(members):
            n = self.lengths[i]
            x[row, :n] = self._inputs[i]
            y[row, :n] = self._targets[i]
            weight[row, :n] = 1.0
        # As BucketedSequences: the weights sum to weight.size, so Keras'
        # "sum_over_batch_size" gives the mean over real steps.
        weight *= weight.size / weight.sum()
        return x, y, weight.astype(keras.backend.floatx())


def batch_length(data, index):
    """The padded length of batch `index` of a `PaddedBatches` or a
    `BucketedSequences` (the boundary of the bucket of its sequences)."""
    if isinstance(data, PaddedBatches):
        return data.batch_length(index)
    longest = data.lengths[data.batch_indices(index)].max()
    return int(data.boundaries[np.searchsorted(data.boundaries, longest)])


class BatchLengths(keras.callbacks.Callback):
    """The padded length of every batch `fit` trains on, in order.

    Read while the epoch runs: a shuffling dataset draws a new order at
    `on_epoch_end`, after the epoch.
    """

    def __init__(self, data):
        super().__init__()
        self.data = data
        self.lengths = []

    def on_train_batch_begin(self, batch, logs=None):
        self.lengths.append(batch_length(self.data, batch))
