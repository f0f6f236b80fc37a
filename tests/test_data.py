"""BucketedSequences: bucket shapes, padding that the loss and the final state
never see, one compilation per bucket, shuffling, and argument errors."""

import glob
import math
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import superloop_cell as sc
from superloop_cell.data import BucketedSequences

ATOL = 1e-5


def _sequences(lengths, seed=0, features=2, target_shape=(1,)):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(n, features)).astype("f4") for n in lengths]
    ys = [rng.normal(size=(n,) + target_shape).astype("f4") for n in lengths]
    return xs, ys


def _model(return_sequences=True, masking=False, depth=1):
    cell = sc.SuperloopCell([sc.SGUCell(4) for _ in range(depth)],
                            [sc.RegisterMemory(registers=2, width=3)])
    inputs = keras.Input((None, 2))
    h = keras.layers.Masking(0.0)(inputs) if masking else inputs
    h = keras.layers.RNN(cell, return_sequences=return_sequences)(h)
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def _epoch(data):
    return [data.batch_indices(i).tolist() for i in range(len(data))]


# Shapes and contents -------------------------------------------------------


def test_batches_hold_one_bucket_padded_to_its_boundary():
    lengths = [1, 3, 5, 9, 16, 17, 4, 8, 2, 3]
    xs, ys = _sequences(lengths)
    data = BucketedSequences(xs, ys, batch_size=2, seed=0)
    assert data.boundaries == (1, 2, 4, 8, 16, 32)
    # Buckets: 1:[1] 2:[2] 4:[3,3,4] 8:[5,8] 16:[9,16] 32:[17].
    assert len(data) == 1 + 1 + 2 + 1 + 1 + 1
    seen = []
    for b in range(len(data)):
        x, y, w = data[b]
        members = data.batch_indices(b)
        bucket = x.shape[1]
        assert x.shape == (2, bucket, 2) and y.shape == (2, bucket, 1)
        assert w.shape == (2, bucket) and w.dtype == keras.backend.floatx()
        real_steps = sum(lengths[i] for i in members)
        scale = 2 * bucket / real_steps
        for row, i in enumerate(members):
            n = lengths[i]
            # The smallest boundary that holds the sequence.
            assert bucket >= n and (bucket == 1 or bucket // 2 < n)
            np.testing.assert_array_equal(x[row, :n], xs[i])
            np.testing.assert_array_equal(y[row, :n], ys[i])
            assert not x[row, n:].any() and not y[row, n:].any()
            np.testing.assert_allclose(w[row, :n], scale, rtol=1e-6)
            assert not w[row, n:].any()
        # Filler rows: all padding, weight 0.
        assert not x[len(members):].any() and not w[len(members):].any()
        np.testing.assert_allclose(w.sum(), w.size, rtol=1e-6)
        seen.extend(members.tolist())
    assert sorted(seen) == list(range(len(lengths)))
    with pytest.raises(IndexError):
        data[len(data)]


def test_per_sequence_targets_and_plain_weights():
    lengths = [2, 7, 3]
    xs, _ = _sequences(lengths)
    labels = [np.array([i, -i], "f4") for i in range(3)]
    data = BucketedSequences(xs, labels, batch_size=2, boundaries=[8],
                             shuffle=False, targets_per_step=False,
                             padding_value=-1.0)
    x, y, w = data[1]  # sequence 2 and a filler row
    assert data.batch_indices(1).tolist() == [2]
    assert x.shape == (2, 8, 2) and y.shape == (2, 2) and w.shape == (2,)
    np.testing.assert_array_equal(y, [[2, -2], [0, 0]])
    np.testing.assert_array_equal(w, [2.0, 0.0])  # batch_size / real_rows
    assert (x[0, 3:] == -1).all() and (x[1] == -1).all()
    plain = BucketedSequences(xs, labels, batch_size=2, boundaries=[8],
                              shuffle=False, targets_per_step=False,
                              normalize_weights=False)
    np.testing.assert_array_equal(plain[1][2], [1.0, 0.0])


# Padding is invisible to the loss and to the final state -------------------


def _run_alone(model, xs, members):
    """`model`'s output for each sequence of `members`, unpadded (those of
    one length run together), in the order of `members`."""
    outputs = {}
    for n in sorted({len(xs[i]) for i in members}):
        same = [i for i in members if len(xs[i]) == n]
        batch = np.stack([xs[i] for i in same])
        outputs.update(zip(same, keras.ops.convert_to_numpy(model(batch))))
    return [outputs[i] for i in members]


def _reference_loss(model, xs, ys, members):
    """Mean squared error over the real steps of `members`, each sequence run
    alone, unpadded."""
    errors = sum(np.sum((out.astype("f8") - ys[i]) ** 2) for i, out in
                 zip(members, _run_alone(model, xs, members)))
    return errors / sum(len(xs[i]) for i in members)


def _reference_step(model, xs, ys, members):
    """The loss over the real steps of `members` and the weight change of one
    SGD step (rate 1) on it, from each sequence run alone, unpadded: the
    steps' mean is `Σ n_i/N · mean_i`, so it is the sum of one step per
    sequence with rate n_i/N (`model` must be compiled with SGD and "mse")."""
    total_steps = sum(len(xs[i]) for i in members)
    weights = model.get_weights()
    loss, change = 0.0, [np.zeros_like(w) for w in weights]
    for i in members:
        share = len(xs[i]) / total_steps
        model.optimizer.learning_rate.assign(share)
        # train_on_batch returns the loss before its update.
        loss += share * model.train_on_batch(
            xs[i][None], ys[i][None], return_dict=True)["loss"]
        change = [c + (a - b) for c, a, b in
                  zip(change, model.get_weights(), weights)]
        model.set_weights(weights)
    return loss, change


@pytest.mark.parametrize("masking", [False, True])
def test_loss_and_gradients_equal_the_mean_over_real_steps(masking):
    # One bucket: a full batch, then 2 sequences and a filler row. Two
    # lengths only, so that the reference runs compile twice, not 5 times.
    # A model whose output carries a Keras mask (a `Masking` layer before
    # the RNN, `return_sequences=True`) takes plain weights.
    lengths = [3, 6, 6, 3, 6]
    xs, ys = _sequences(lengths, seed=1)
    # Keras calls `on_epoch_end` before `evaluate` starts: fix the order.
    data = BucketedSequences(xs, ys, batch_size=3, boundaries=[8],
                             shuffle=False, normalize_weights=not masking)
    assert data.maskable
    assert [data.batch_indices(b).tolist() for b in range(2)] == [
        [0, 1, 2], [3, 4]]
    model = _model(masking=masking)
    model.compile(keras.optimizers.SGD(1.0), "mse", weighted_metrics=["mse"],
                  metrics=[keras.metrics.MeanSquaredError("unweighted")])
    reference = keras.models.clone_model(model)
    reference.compile(keras.optimizers.SGD(1.0), "mse")
    start = model.get_weights()
    reference.set_weights(start)
    wanted = [_reference_step(reference, xs, ys, data.batch_indices(b))
              for b in range(len(data))]
    # What `evaluate` reports: each batch's mean counts once, in the loss
    # and in weighted metrics; `metrics=` ignore the weights.
    mean = np.mean([loss for loss, _ in wanted])
    reported = model.evaluate(data, verbose=0, return_dict=True)
    assert math.isclose(reported["loss"], mean, abs_tol=ATOL)
    if not masking:
        # (Whether Keras weighs metrics by an output's mask differs between
        # backends: torch does not; the loss is the same on all three.)
        assert math.isclose(reported["mse"], mean, abs_tol=ATOL)
        assert not math.isclose(reported["unweighted"], mean, rel_tol=0.01)
    for b, (want_loss, want_change) in enumerate(wanted):
        x, y, w = data[b]
        assert (w > 0).sum() < w.size  # there is padding to hide
        model.set_weights(start)
        got_loss = model.train_on_batch(x, y, w, return_dict=True)["loss"]
        assert math.isclose(got_loss, want_loss, abs_tol=ATOL)
        for got, before, want in zip(model.get_weights(), start,
                                     want_change):
            np.testing.assert_allclose(got - before, want, atol=ATOL)


def test_masked_outputs_want_plain_weights():
    # A mask that reaches the loss makes Keras divide by the unmasked steps
    # itself: normalised weights would then count the scale twice.
    lengths = [3, 6, 6]  # and a filler row, all padding: masked too
    xs, ys = _sequences(lengths, seed=2)
    model = _model(masking=True)
    model.compile("sgd", "mse")
    plain, normalised = (
        BucketedSequences(xs, ys, batch_size=4, boundaries=[8],
                          shuffle=False, normalize_weights=normalize)[0]
        for normalize in (False, True))
    want = _reference_loss(model, xs, ys, [0, 1, 2])
    assert math.isclose(model.test_on_batch(*plain), want, rel_tol=1e-5)
    scale = 4 * 8 / sum(lengths)
    assert math.isclose(model.test_on_batch(*normalised), want * scale,
                        rel_tol=1e-5)


def test_mean_with_sample_weight_and_plain_weights_fit_any_model():
    # The reduction that divides by the sum of the weights is exact with
    # plain weights whether or not the output carries a mask.
    lengths = [3, 6, 6]
    xs, ys = _sequences(lengths, seed=2)
    x, y, w = BucketedSequences(xs, ys, batch_size=4, boundaries=[8],
                                shuffle=False, normalize_weights=False)[0]
    for masking in (True, False):
        model = _model(masking=masking)
        model.compile("sgd", keras.losses.MeanSquaredError(
            reduction="mean_with_sample_weight"))
        want = _reference_loss(model, xs, ys, [0, 1, 2])
        assert math.isclose(model.test_on_batch(x, y, w), want,
                            rel_tol=1e-5)


def test_masking_gives_each_row_the_final_state_of_its_sequence():
    # One bucket: a full batch, then 2 sequences and a filler row.
    lengths = [2, 9, 3, 9, 2]
    xs, _ = _sequences(lengths, seed=4)
    labels = [np.array([n / 10], "f4") for n in lengths]
    data = BucketedSequences(xs, labels, batch_size=3, boundaries=[12],
                             targets_per_step=False, seed=0)
    assert data.maskable
    masked = _model(return_sequences=False, masking=True)
    unmasked = keras.Model(masked.input, masked.layers[-1](
        masked.layers[-2](masked.input)))  # the same weights, no Masking
    masked.compile("sgd", "mse")
    alone = _run_alone(masked, xs, range(len(lengths)))
    batches = [data[b] for b in range(len(data))]
    x_all = np.concatenate([x for x, _, _ in batches])
    out_all = keras.ops.convert_to_numpy(masked(x_all))
    raw_all = keras.ops.convert_to_numpy(unmasked(x_all))
    for b, (x, y, w) in enumerate(batches):
        members = data.batch_indices(b)
        want = np.stack([alone[i] for i in members])
        rows = slice(3 * b, 3 * b + len(members))
        np.testing.assert_allclose(out_all[rows], want, atol=ATOL)
        # Without the mask, the padding changes the final states.
        assert not np.allclose(raw_all[rows], want, atol=1e-3)
        # Per-sequence targets: the loss is the mean over the real rows.
        want_loss = np.mean((want.astype("f8") - y[:len(members)]) ** 2)
        assert math.isclose(masked.test_on_batch(x, y, w), want_loss,
                            abs_tol=ATOL)


def test_maskable_says_whether_a_real_step_looks_like_padding():
    xs, ys = _sequences([3, 4])
    assert BucketedSequences(xs, ys, 2).maskable
    xs[1][2] = 0.0
    assert not BucketedSequences(xs, ys, 2).maskable
    assert BucketedSequences(xs, ys, 2, padding_value=-1.0).maskable
    ints = [np.array([[1], [0]]), np.array([[2]])]
    assert not BucketedSequences(ints, ints, 2).maskable


# Compilations --------------------------------------------------------------


_LENGTHS = list(range(3, 25))  # 22 lengths, buckets 12 and 24
_BOUNDARIES = [12, 24]


def _counting_model(jit_compile=True):
    # Python in `train_step` runs only while it is traced (on torch, at
    # every step).
    class Counting(keras.Model):
        traced_shapes = []

        def train_step(self, *args):
            Counting.traced_shapes.append(tuple(args[-1][0].shape))
            return super().train_step(*args)

    inner = _model()
    model = Counting(inner.input, inner.output)
    model.compile("sgd", "mse", jit_compile=jit_compile)
    return model


def _fit_and_trace(dump_to=None, jit_compile=True):
    """Fits 2 epochs of `_LENGTHS` and returns the shapes `train_step` was
    traced with and, with `dump_to` (on TensorFlow), the number of train
    steps XLA compiled, read from the modules that XLA_FLAGS=--xla_dump_to=
    dump_to made it write."""
    keras.utils.set_random_seed(0)
    xs, ys = _sequences(_LENGTHS, seed=5)
    data = BucketedSequences(xs, ys, batch_size=4, boundaries=_BOUNDARIES,
                             seed=0)
    # Both buckets end with a partial batch, filled up to 4 rows.
    assert {data[b][0].shape for b in range(len(data))} == {
        (4, 12, 2), (4, 24, 2)}
    model = _counting_model(jit_compile)
    model.fit(data, epochs=2, verbose=0)
    compiled = None
    if dump_to is not None:
        compiled = len(glob.glob(os.path.join(
            dump_to, "*one_step_on_data*.before_optimizations.txt")))
    return type(model).traced_shapes, compiled


_IN_A_SUBPROCESS = """
import sys
sys.path[:0] = [{tests!r}, {root!r}]
import test_data
traced, compiled = test_data._fit_and_trace({dump!r})
print("traced", traced)
print("compiled", compiled)
"""


def test_one_compilation_per_bucket_not_per_length(tmp_path):
    if keras.backend.backend() == "torch":
        # Keras' torch trainer runs the step eagerly (`jit_compile=True`
        # would hand it to torch.compile): nothing to count but the shapes,
        # one per bucket, at every batch.
        traced, _ = _fit_and_trace(jit_compile=False)
        batches = len(BucketedSequences(*_sequences(_LENGTHS, seed=5),
                                        batch_size=4,
                                        boundaries=_BOUNDARIES))
        assert set(traced) == {(4, 12, 2), (4, 24, 2)}
        assert len(traced) == 2 * batches, (len(traced), batches)
        return
    if keras.backend.backend() == "jax":
        # Under jax.jit, a trace is a compilation: one per input shape.
        traced, _ = _fit_and_trace()
        assert sorted(traced) == [(4, 12, 2), (4, 24, 2)]
        return
    # On TensorFlow, Keras' input signature leaves the time axis None: the
    # train step is traced once for (None, None, 2), and XLA compiles below
    # it once per concrete shape, out of Python's sight. Count the modules
    # XLA dumps, in a fresh process (XLA reads XLA_FLAGS once).
    tests = os.path.dirname(os.path.abspath(__file__))
    dump = str(tmp_path / "xla")
    script = _IN_A_SUBPROCESS.format(tests=tests, root=os.path.dirname(tests),
                                     dump=dump)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow",
           "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_FLAGS": f"--xla_dump_to={dump}"}
    run = subprocess.run([sys.executable, "-c", script], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "\ncompiled 2\n" in run.stdout, run.stdout
    traced = re.search(r"^traced (.*)$", run.stdout, re.M).group(1)
    assert traced == "[(None, None, 2)]"


# Order ---------------------------------------------------------------------


def test_shuffle_is_reproducible_and_reshuffles_each_epoch():
    lengths = [3, 5, 2, 7, 8, 6, 4, 1, 5, 3, 7, 2, 6, 8, 4, 3] * 2
    xs, ys = _sequences(lengths)

    def epochs(seed, count=3):
        data = BucketedSequences(xs, ys, batch_size=3, seed=seed)
        out = []
        for _ in range(count):
            out.append(_epoch(data))
            data.on_epoch_end()
        return out

    first, again, other = epochs(7), epochs(7), epochs(8)
    assert first == again and first != other
    for epoch in first:
        assert sorted(sum(epoch, [])) == list(range(len(lengths)))
    assert first[0] != first[1]
    # Not only the order: which sequences share a batch changes too.
    groups = [{frozenset(batch) for batch in epoch} for epoch in first]
    assert groups[0] != groups[1]


def test_without_shuffle_the_order_is_fixed():
    lengths = [5, 1, 7, 2, 6, 8, 3]
    xs, ys = _sequences(lengths)
    data = BucketedSequences(xs, ys, batch_size=2, shuffle=False)
    before = _epoch(data)
    data.on_epoch_end()
    assert _epoch(data) == before
    # Buckets 1:[1] 2:[3] 4:[6] 8:[0, 2, 4, 5], in order.
    assert before == [[1], [3], [6], [0, 2], [4, 5]]
    # Bucket 1 makes two batches: the second one Keras peeks at (see below)
    # is taken from another bucket.
    xs, ys = _sequences([1, 1, 1, 5])
    data = BucketedSequences(xs, ys, batch_size=2, shuffle=False)
    assert _epoch(data) == [[0, 1], [3], [2]]


def test_the_two_batches_keras_peeks_at_differ_in_length():
    # Keras fixes TensorFlow's input signature from batches 0 and 1.
    lengths = [3] * 12 + [9]  # 4 batches in bucket 4, one in bucket 16
    xs, ys = _sequences(lengths)
    for seed in range(6):
        data = BucketedSequences(xs, ys, batch_size=3, seed=seed)
        for _ in range(3):
            assert data[0][0].shape[1] != data[1][0].shape[1], seed
            data.on_epoch_end()
    single = BucketedSequences(xs[:12], ys[:12], batch_size=3, seed=0)
    assert {single[b][0].shape for b in range(len(single))} == {(3, 4, 2)}


def test_fit_runs_when_the_first_bucket_has_several_batches():
    # Batches 1, 1 and 8 steps long in this order would give TensorFlow a
    # signature with 1 step, and the 8-step batch would then fail in fit.
    xs, ys = _sequences([1, 1, 1, 5])
    data = BucketedSequences(xs, ys, batch_size=2, shuffle=False)
    assert [data[b][0].shape[1] for b in range(len(data))] == [1, 8, 1]
    model = _model()
    model.compile("sgd", "mse", jit_compile=True)
    history = model.fit(data, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# Bad input -----------------------------------------------------------------


def _bad(**changes):
    xs, ys = _sequences([2, 3, 4])
    kwargs = dict(inputs=xs, targets=ys, batch_size=2)
    kwargs.update(changes)
    return kwargs


_X = _sequences([2, 3, 4])[0]
_Y = _sequences([2, 3, 4])[1]


_BAD_CASES = [
    (dict(batch_size=0), ValueError, r"`batch_size`: expected a positive "
                                     r"integer, got 0 \(type int\)"),
    (dict(batch_size=2.0), ValueError, r"`batch_size`.*got 2\.0"),
    (dict(batch_size=True), ValueError, r"`batch_size`.*got True"),
    (dict(boundaries=[4, 4]), ValueError,
     r"`boundaries`: expected strictly increasing.*\[4, 4\]"),
    (dict(boundaries=[8, 4]), ValueError, r"`boundaries`.*\[8, 4\]"),
    (dict(boundaries=[0, 4]), ValueError, r"`boundaries\[0\]`.*got 0"),
    (dict(boundaries=[2.5, 4]), ValueError, r"`boundaries\[0\]`.*got 2\.5"),
    (dict(boundaries=[]), ValueError, r"`boundaries`.*non-empty.*got \[\]"),
    (dict(boundaries=8), TypeError, r"`boundaries`.*got 8 \(type int\)"),
    (dict(boundaries=[2, 3]), ValueError,
     r"`boundaries`: expected a largest boundary of at least 4, the length "
     r"of `inputs\[2\]`, got \[2, 3\]"),
    (dict(inputs=[], targets=[]), ValueError, r"`inputs`.*non-empty.*\[\]"),
    (dict(inputs=np.zeros((3, 4, 2))), TypeError,
     r"`inputs`: expected a list.*type ndarray"),
    (dict(inputs=[_X[0], [[1.0, 2.0]], _X[2]]), TypeError,
     r"`inputs\[1\]`: expected a NumPy array, got \[\[1\.0, 2\.0\]\] "
     r"\(type list\)"),
    (dict(inputs=[_X[0], np.array([["a", "b"]]), _X[2]]), TypeError,
     r"`inputs\[1\]`: expected a numeric.*<U1"),
    (dict(inputs=[_X[0], np.zeros(3), _X[2]]), ValueError,
     r"`inputs\[1\]`: expected an array of shape \(length, features\), got "
     r"shape \(3,\)"),
    (dict(inputs=[_X[0], np.zeros((0, 2), "f4"), _X[2]]), ValueError,
     r"`inputs\[1\]`: expected a sequence of at least one step, got shape "
     r"\(0, 2\)"),
    (dict(inputs=[_X[0], _X[1], np.zeros((4, 3), "f4")]), ValueError,
     r"`inputs\[2\]`: expected 2 features per step \(the width of "
     r"`inputs\[0\]`\), got shape \(4, 3\)"),
    (dict(targets=_Y[:2]), ValueError,
     r"`targets`: expected one target per input sequence \(3\), got 2"),
    (dict(targets=[_Y[0], _Y[1][:2], _Y[2]]), ValueError,
     r"`targets\[1\]`: expected 3 steps.*like `inputs\[1\]`.*got shape "
     r"\(2, 1\)"),
    (dict(targets=[_Y[0], _Y[1], np.zeros((4, 2), "f4")]), ValueError,
     r"`targets\[2\]`: expected the shape \(1,\) per step of `targets\[0\]`, "
     r"got shape \(4, 2\)"),
    (dict(targets=(_Y[0], _Y[1], None)), TypeError,
     r"`targets\[2\]`: expected a NumPy array, got None"),
    (dict(shuffle="yes"), TypeError, r"`shuffle`.*'yes'"),
    (dict(seed=-1), ValueError, r"`seed`.*-1"),
    (dict(seed=1.5), TypeError, r"`seed`.*1\.5"),
    (dict(padding_value=float("nan")), ValueError, r"`padding_value`.*nan"),
    (dict(inputs=[np.ones((n, 2), "i4") for n in (2, 3, 4)],
          padding_value=0.5), ValueError,
     r"`padding_value`: expected a whole number for inputs of dtype int32"),
    (dict(targets_per_step=1), TypeError, r"`targets_per_step`.*1"),
    (dict(normalize_weights=None), TypeError, r"`normalize_weights`.*None"),
]


def test_bad_arguments_are_named_with_what_was_received():
    for changes, error, message in _BAD_CASES:
        with pytest.raises(error, match=message):
            BucketedSequences(**_bad(**changes))


def test_mean_loss_weights_make_the_default_reduction_a_weighted_mean():
    rng = np.random.default_rng(8)
    weight = (rng.random((4, 7)) < 0.4).astype("f4")
    losses = rng.random((4, 7))
    scaled = sc.mean_loss_weights(weight)
    # "sum_over_batch_size": the weighted sum over the number of entries.
    np.testing.assert_allclose(np.sum(losses * scaled) / scaled.size,
                               np.sum(losses * weight) / weight.sum())
    np.testing.assert_array_equal(sc.mean_loss_weights(np.zeros(3)),
                                  np.zeros(3))
    xs, ys = _sequences([3, 5, 5], seed=3)
    _, _, w = BucketedSequences(xs, ys, batch_size=4, boundaries=[8],
                                shuffle=False)[0]
    plain = BucketedSequences(xs, ys, batch_size=4, boundaries=[8],
                              shuffle=False, normalize_weights=False)[0][2]
    np.testing.assert_allclose(w, sc.mean_loss_weights(plain), rtol=1e-6)
