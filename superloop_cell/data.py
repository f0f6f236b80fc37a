"""Variable-length sequences in a few fixed shapes, for compiled training.

Keras 3 compiles the train step with XLA (always on JAX, with
`jit_compile=True` on TensorFlow), and XLA compiles once per input shape: fed
one batch per sequence length, a model pays one compilation per length.
`BucketedSequences` groups sequences into buckets of similar length and pads
each batch to its bucket's boundary, so a whole data set costs one
compilation per bucket. See `docs/variable_length.md`.
"""

import functools
import reprlib

import keras
import numpy as np

from superloop_cell import _validation

# Keras derives TensorFlow's input signature from this many leading batches
# (`keras/src/trainers/data_adapters/data_adapter_utils.py`): a dimension they
# agree on is fixed for the whole run.
_BATCHES_KERAS_PEEKS_AT = 2


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40


def _short_repr(value):
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    return " ".join(_REPR.repr(value).split())


def _invalid(name, expected, got):
    return (
        f"Received an invalid value for argument `{name}`: expected "
        f"{expected}, got {got}."
    )


def _check_boundaries(boundaries):
    """Returns `boundaries` as a tuple of strictly increasing positive ints."""
    if not isinstance(boundaries, (list, tuple)):
        raise TypeError(_invalid(
            "boundaries", "None or a list of increasing positive integers",
            f"{_short_repr(boundaries)} (type {type(boundaries).__name__})"))
    if not boundaries:
        raise ValueError(_invalid(
            "boundaries", "None or a non-empty list of increasing positive "
            "integers", f"{boundaries!r}"))
    for i, b in enumerate(boundaries):
        _validation.positive_int(f"boundaries[{i}]", b)
    checked = tuple(int(b) for b in boundaries)
    for i in range(1, len(checked)):
        if checked[i] <= checked[i - 1]:
            raise ValueError(_invalid(
                "boundaries", "strictly increasing positive integers",
                f"{list(checked)} ({checked[i]} after {checked[i - 1]})"))
    return checked


def _check_arrays(name, items):
    """Checks that `items` is a non-empty list or tuple of numeric arrays."""
    if not isinstance(items, (list, tuple)):
        raise TypeError(_invalid(
            name, "a list of NumPy arrays, one per sequence",
            f"{_short_repr(items)} (type {type(items).__name__})"))
    if not items:
        raise ValueError(_invalid(
            name, "a non-empty list of NumPy arrays", f"{items!r}"))
    for i, item in enumerate(items):
        if not isinstance(item, np.ndarray):
            raise TypeError(_invalid(
                f"{name}[{i}]", "a NumPy array",
                f"{_short_repr(item)} (type {type(item).__name__})"))
        if not (np.issubdtype(item.dtype, np.number)
                or item.dtype == np.bool_):
            raise TypeError(_invalid(
                f"{name}[{i}]", "a numeric NumPy array",
                f"dtype {item.dtype}"))


def _check_inputs(inputs):
    _check_arrays("inputs", inputs)
    features = None
    for i, x in enumerate(inputs):
        if x.ndim != 2:
            raise ValueError(_invalid(
                f"inputs[{i}]", "an array of shape (length, features)",
                f"shape {x.shape}"))
        if x.shape[0] == 0:
            raise ValueError(_invalid(
                f"inputs[{i}]", "a sequence of at least one step",
                f"shape {x.shape}"))
        if features is None:
            features = x.shape[1]
        elif x.shape[1] != features:
            raise ValueError(_invalid(
                f"inputs[{i}]", f"{features} features per step (the width "
                "of `inputs[0]`)", f"shape {x.shape}"))
    return features


def _check_targets(targets, lengths, per_step):
    _check_arrays("targets", targets)
    if len(targets) != len(lengths):
        raise ValueError(_invalid(
            "targets", f"one target per input sequence ({len(lengths)})",
            f"{len(targets)}"))
    if per_step:
        for i, (y, length) in enumerate(zip(targets, lengths)):
            if y.ndim == 0 or y.shape[0] != length:
                raise ValueError(_invalid(
                    f"targets[{i}]", f"{length} steps on the first axis, "
                    f"like `inputs[{i}]` (or pass `targets_per_step=False` "
                    "for one target per sequence)", f"shape {y.shape}"))
    step_shape = targets[0].shape[1:] if per_step else targets[0].shape
    for i, y in enumerate(targets):
        shape = y.shape[1:] if per_step else y.shape
        if shape != step_shape:
            what = "per step " if per_step else ""
            raise ValueError(_invalid(
                f"targets[{i}]", f"the shape {step_shape} {what}of "
                "`targets[0]`", f"shape {y.shape}"))
    return step_shape


def _powers_of_two_up_to(longest):
    """(1, 2, 4, …, 2**k) with 2**k the smallest power of two ≥ `longest`."""
    boundaries = [1]
    while boundaries[-1] < longest:
        boundaries.append(2 * boundaries[-1])
    return tuple(boundaries)


def _common_dtype(arrays):
    return np.result_type(*{a.dtype for a in arrays})


class BucketedSequences(keras.utils.PyDataset):
    """Batches of variable-length sequences, padded to a few bucket lengths.

    Each sequence goes to the bucket of the smallest boundary at least as long
    as it is. Every batch holds sequences of one bucket, padded at the end to
    that bucket's boundary, and has exactly `batch_size` rows: a bucket's last
    batch is filled up with filler rows (all padding, weight 0). So the model
    sees one input shape per bucket used, and a compiled train step (XLA,
    always on JAX, `jit_compile=True` on TensorFlow) is compiled once per
    bucket instead of once per sequence length.

    **Loss normalisation.** Keras' default loss reduction,
    `"sum_over_batch_size"`, divides the weighted sum of a batch's losses by
    the number of loss values (`batch_size · bucket_length` per-step values),
    not by the sum of the weights, so 0/1 weights would shrink the loss of a
    batch with much padding. With `normalize_weights=True` (the default) the
    weight of every real step is instead

        scale = batch_size · bucket_length / real_steps

    (`real_steps`: the unpadded steps in the batch), and 0 elsewhere. The
    reduced loss is then `Σ_real loss / real_steps`: the mean over the
    batch's real steps, exactly what the unpadded sequences give, and so are
    its gradients. Metrics compiled as `weighted_metrics` are weighted means,
    which the scale does not change (metrics passed as `metrics=` ignore
    sample weights, and so average over the padding). With
    `targets_per_step=False` the same holds per row:
    `scale = batch_size / real_rows`.

    If the model's output carries a Keras mask (e.g. `keras.layers.Masking`
    before an RNN with `return_sequences=True`, as a `Bidirectional` RNN
    needs), Keras already divides by the number of unmasked steps: pass
    `normalize_weights=False` for plain 1/0 weights there (the loss and
    gradients are then again those of the unpadded sequences). Filler rows
    are all padding, so the mask covers them too. A loss compiled with
    `reduction="mean_with_sample_weight"` is exact with plain weights
    whether or not the output carries a mask.

    The `tf.data` route (`tf.data.Dataset.bucket_by_sequence_length` with
    `pad_to_bucket_boundary=True`) and its differences are described in
    `docs/variable_length.md`.

    **Final states.** A model that reads the final state
    (`return_sequences=False`) must not run over the padding: put
    `keras.layers.Masking(mask_value=padding_value)` before the RNN, and the
    final state of each row is that of its unpadded sequence. This is exact
    when no real step has every feature equal to `padding_value`; the
    attribute `maskable` says whether that holds.

    **Order.** With `shuffle=True` each epoch regroups the sequences of each
    bucket into batches and shuffles the order of all batches, reproducibly
    for a given `seed`; `on_epoch_end()` draws the next epoch (Keras also
    calls it once before `fit`, `evaluate` or `predict` starts). With two or
    more buckets in use, the first two batches always come from different
    buckets: Keras builds TensorFlow's input signature from the first two
    batches, and this keeps its time axis `None` (one trace for all buckets;
    a fixed time axis would make `fit` fail on the next bucket). Note that `fit(shuffle=True)`, Keras' default, also permutes the
    batch order (with Python's `random`); pass `shuffle=False` to `fit` to
    keep this dataset's order.

    Args:
        inputs: list of NumPy arrays, one per sequence, each of shape
            `(length, features)`; the same `features` for all, `length ≥ 1`.
        targets: list of NumPy arrays, one per sequence. With
            `targets_per_step=True`, each of shape `(length, ...)` with the
            length of its input and the same trailing shape for all; else each
            of one shape `(...)` for the whole sequence.
        batch_size: positive int, the number of rows of every batch.
        boundaries: increasing positive ints, the bucket lengths. Defaults to
            `None`: the powers of two `1, 2, 4, …` up to the smallest one at
            least as long as the longest sequence. The largest boundary must
            be at least the longest sequence.
        shuffle: bool, whether to shuffle batches and their grouping each
            epoch. Defaults to `True`.
        seed: int ≥ 0 or `None`, the seed of the shuffling. Defaults to
            `None` (a different order on each run).
        padding_value: finite number written at the padded steps of the
            inputs (and in filler rows). Defaults to `0.0`. Padded targets
            are always 0.
        targets_per_step: bool. Defaults to `True`: one target per step,
            padded like the inputs. `False`: one target per sequence (for a
            model that reads the final state), stacked without padding.
        normalize_weights: bool. Defaults to `True`: real steps weigh
            `scale` (see above) so that the default loss reduction averages
            over real steps. `False`: plain weights of 1 and 0.
        **kwargs: passed to `keras.utils.PyDataset` (`workers`,
            `use_multiprocessing`, `max_queue_size`).

    Yields:
        A tuple `(x, y, sample_weight)` per batch, with `L` the bucket's
        boundary and `B = batch_size`:
        - `x`: `(B, L, features)`, the inputs, `padding_value` after each
          sequence's end and in filler rows.
        - `y`: `(B, L, ...)` with per-step targets (0 after the end), or
          `(B, ...)` with per-sequence ones (0 in filler rows).
        - `sample_weight`: `(B, L)` (`(B,)` with per-sequence targets), in
          `keras.backend.floatx()`: `scale` (or 1) at real steps, 0 at padding
          and in filler rows.

    Attributes:
        lengths: int array `(num_sequences,)`, the length of each sequence.
        boundaries: tuple of ints, the bucket lengths.
        maskable: whether `keras.layers.Masking(mask_value=padding_value)`
            masks exactly the padding: `False` if some real step of the
            inputs has every feature equal to `padding_value`.

    Example:

    ```python
    import keras
    import numpy as np
    import superloop_cell as sc
    from superloop_cell.data import BucketedSequences

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=200)
    xs = [rng.normal(size=(n, 2)).astype("float32") for n in lengths]
    ys = [x.sum(axis=1, keepdims=True) for x in xs]

    cell = sc.SuperloopCell([sc.SGUCell(8)], [sc.RegisterMemory(registers=4, width=3)])
    inputs = keras.Input((None, 2))
    outputs = keras.layers.Dense(1)(
        keras.layers.RNN(cell, return_sequences=True)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "mse", jit_compile=True)
    # Up to 49 lengths, but 7 buckets (1, 2, 4, …, 64): ≤ 7 compilations.
    data = BucketedSequences(xs, ys, batch_size=16, seed=0)
    model.fit(data, epochs=2)
    ```
    """

    def __init__(
        self,
        inputs,
        targets,
        batch_size,
        boundaries=None,
        shuffle=True,
        seed=None,
        padding_value=0.0,
        targets_per_step=True,
        normalize_weights=True,
        **kwargs,
    ):
        self.batch_size = _validation.positive_int("batch_size", batch_size)
        if boundaries is not None:
            boundaries = _check_boundaries(boundaries)
        self.shuffle = _validation.boolean("shuffle", shuffle)
        _validation.optional_int("seed", seed)
        if seed is not None and seed < 0:
            raise ValueError(_invalid("seed", "an int ≥ 0 or None",
                                      f"{seed!r}"))
        self.padding_value = _validation.finite_float(
            "padding_value", padding_value)
        self.targets_per_step = _validation.boolean(
            "targets_per_step", targets_per_step)
        self.normalize_weights = _validation.boolean(
            "normalize_weights", normalize_weights)

        self._features = _check_inputs(inputs)
        self.lengths = np.array([x.shape[0] for x in inputs], dtype=np.int64)
        self._target_shape = _check_targets(targets, self.lengths,
                                            self.targets_per_step)
        self._input_dtype = _common_dtype(inputs)
        self._target_dtype = _common_dtype(targets)
        if (not np.issubdtype(self._input_dtype, np.floating)
                and not self.padding_value.is_integer()):
            raise ValueError(_invalid(
                "padding_value", f"a whole number for inputs of dtype "
                f"{self._input_dtype}", f"{padding_value!r}"))
        longest = int(self.lengths.max())
        if boundaries is None:
            boundaries = _powers_of_two_up_to(longest)
        elif boundaries[-1] < longest:
            where = int(np.argmax(self.lengths))
            raise ValueError(_invalid(
                "boundaries", f"a largest boundary of at least {longest}, the "
                f"length of `inputs[{where}]`", f"{list(boundaries)}"))
        super().__init__(**kwargs)

        self.boundaries = boundaries
        self._inputs = list(inputs)
        self._targets = list(targets)
        # Bucket b holds the sequences with boundaries[b-1] < length ≤
        # boundaries[b]; only buckets that hold some are kept.
        bucket_of = np.searchsorted(boundaries, self.lengths, side="left")
        self._buckets = [
            (boundaries[b], np.flatnonzero(bucket_of == b))
            for b in np.unique(bucket_of)
        ]
        self._rng = np.random.default_rng(seed)
        self._batches = self._plan_epoch()

    def _plan_epoch(self):
        """This epoch's batches: `[(bucket_length, sequence indices)]`."""
        batches = []
        for length, members in self._buckets:
            if self.shuffle:
                members = self._rng.permutation(members)
            for start in range(0, len(members), self.batch_size):
                batches.append(
                    (length, members[start:start + self.batch_size]))
        if self.shuffle:
            batches = [batches[i] for i in self._rng.permutation(len(batches))]
        # Make the batches Keras peeks at disagree on the time axis.
        first_length = batches[0][0]
        if (len(batches) >= _BATCHES_KERAS_PEEKS_AT
                and batches[1][0] == first_length):
            for j in range(2, len(batches)):
                if batches[j][0] != first_length:
                    batches[1], batches[j] = batches[j], batches[1]
                    break
        return batches

    def __len__(self):
        return len(self._batches)

    def on_epoch_end(self):
        if self.shuffle:
            self._batches = self._plan_epoch()

    def batch_indices(self, index):
        """The indices (into `inputs`) of the real rows of batch `index`.

        Row `i < len(result)` of the batch is sequence `result[i]`; the rows
        after them are filler. Useful to map `predict` outputs back.
        """
        return self._batches[index][1].copy()

    @functools.cached_property
    def maskable(self):
        return not any(
            np.any(np.all(x == self.padding_value, axis=-1))
            for x in self._inputs)

    def __getitem__(self, index):
        length, members = self._batches[index]
        rows = self.batch_size
        x = np.full((rows, length, self._features), self.padding_value,
                    dtype=self._input_dtype)
        if self.targets_per_step:
            y = np.zeros((rows, length) + self._target_shape,
                         dtype=self._target_dtype)
            weight = np.zeros((rows, length), dtype=np.float64)
        else:
            y = np.zeros((rows,) + self._target_shape,
                         dtype=self._target_dtype)
            weight = np.zeros((rows,), dtype=np.float64)
        for row, i in enumerate(members):
            steps = self.lengths[i]
            x[row, :steps] = self._inputs[i]
            if self.targets_per_step:
                y[row, :steps] = self._targets[i]
                weight[row, :steps] = 1.0
            else:
                y[row] = self._targets[i]
                weight[row] = 1.0
        if self.normalize_weights:
            weight = mean_loss_weights(weight)
        return x, y, weight.astype(keras.backend.floatx())


def mean_loss_weights(weight):
    """`weight` (a batch's `sample_weight`, e.g. 1 on the steps that count
    and 0 on padding) scaled so that Keras' default reduction,
    `"sum_over_batch_size"`, which divides the weighted sum by
    `weight.size`, gives the weighted mean: the weights are made to sum to
    `weight.size`. All-zero weights stay zero. For a model whose output
    carries no Keras mask (see `BucketedSequences`).
    """
    weight = np.asarray(weight, np.float64)
    total = weight.sum()
    return weight * (weight.size / total) if total > 0 else weight
