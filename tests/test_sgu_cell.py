"""SGUCell as a Keras cell: initializers, regularizers, constraints,
dropout and recurrent dropout with Keras' meanings, serialised, and honoured
by the fused path (which computes a step with dropout cell by cell).

Backend-neutral.
"""

import keras
import numpy as np
import pytest
from keras import ops

import superloop_cell as sc
from helpers import randomize, rnn_model, value_and_gradients

ATOL = 1e-5


def _sgu_numpy(x, kernel, recurrent, bias, input_mask=None,
               recurrent_mask=None):
    """The SGU over a sequence `(batch, time, features)`, with Keras'
    dropout: the input mask on `x`, the recurrent mask on `h` in `h·U`."""
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    outputs = []
    for t in range(x.shape[1]):
        step = x[:, t] if input_mask is None else x[:, t] * input_mask
        masked_h = h if recurrent_mask is None else h * recurrent_mask
        z = step @ kernel + bias
        a = z[:, :units] + masked_h @ recurrent
        c = np.where(z[:, units:] > 0, z[:, units:], 0.1 * z[:, units:])
        s = 0.5 - 0.5 * a / (1 + np.abs(a))
        h = h + s * (c - h)
        outputs.append(h)
    return np.stack(outputs, axis=1)


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def test_dropout_and_recurrent_dropout_match_numpy_with_keras_masks():
    x = np.random.default_rng(0).normal(size=(4, 6, 3)).astype("float32")
    make = lambda: sc.SGUCell(5, dropout=0.4,  # noqa: E731
                              recurrent_dropout=0.3, seed=7)
    cell = make()
    model = rnn_model(cell, 3, return_sequences=True)
    randomize(cell, seed=1)
    got = _numpy(model(x, training=True))
    # The masks Keras draws for this batch: the same generator, the same
    # order (input mask, then recurrent mask).
    twin = make()
    twin.build((None, 3))
    input_mask = _numpy(twin.get_dropout_mask(ops.ones((4, 3))))
    recurrent_mask = _numpy(twin.get_recurrent_dropout_mask(ops.ones((4, 5))))
    assert 0 < np.mean(input_mask == 0) < 1
    np.testing.assert_allclose(np.unique(input_mask), [0.0, 1 / 0.6],
                               rtol=1e-6)
    weights = [_numpy(w) for w in (cell.kernel, cell.recurrent_kernel,
                                   cell.bias)]
    expected = _sgu_numpy(x, *weights, input_mask, recurrent_mask)
    np.testing.assert_allclose(got, expected, atol=ATOL)
    # Outside training nothing is dropped.
    np.testing.assert_allclose(_numpy(model(x, training=False)),
                               _sgu_numpy(x, *weights), atol=ATOL)
    assert not np.allclose(got, _sgu_numpy(x, *weights), atol=1e-3)


@pytest.mark.parametrize("fused_depth", [4, 9])
def test_fused_run_with_dropout_equals_the_unfused_cells(fused_depth):
    # Same seeds, same masks: a fused run in training with dropout gives
    # the unfused cells' outputs and gradients (it is computed cell by
    # cell); outside training it is fused again.
    def make(fused):
        cells = [sc.SGUCell(5, dropout=0.2, recurrent_dropout=0.3, seed=i)
                 for i in range(fused_depth)]
        return sc.SuperloopCell(cells, [sc.NeuralStack(width=2, capacity=4)],
                                fused=fused, layer_loop=fused_depth > 5)

    unfused, fused = make(False), make(True)
    assert fused.fused_runs == 1
    a = rnn_model(unfused, 2, return_sequences=True)
    b = rnn_model(fused, 2, return_sequences=True)
    randomize(unfused, seed=2)
    b.set_weights(a.get_weights())
    x = np.random.default_rng(3).normal(size=(3, 5, 2)).astype("float32")

    def trained(model, cell):
        def loss(x):
            return ops.sum(ops.sin(model(x, training=True)))

        return value_and_gradients(loss, cell.trainable_weights, [x])

    value_a, grads_a, (d_x_a,) = trained(a, unfused)
    value_b, grads_b, (d_x_b,) = trained(b, fused)
    np.testing.assert_allclose(value_a, value_b, atol=ATOL)
    np.testing.assert_allclose(d_x_a, d_x_b, atol=ATOL)
    for w, ga, gb in zip(unfused.trainable_weights, grads_a, grads_b):
        np.testing.assert_allclose(ga, gb, atol=ATOL, err_msg=w.path)
    np.testing.assert_allclose(_numpy(a(x, training=False)),
                               _numpy(b(x, training=False)), atol=ATOL)
    plain = rnn_model(make(True), 2, return_sequences=True)
    plain.set_weights(a.get_weights())
    assert not np.allclose(_numpy(plain(x, training=True)),
                           _numpy(plain(x, training=False)), atol=1e-3)


def test_cells_with_dropout_train_inside_a_superloop_under_fit():
    # Keras draws every inner cell's masks before its loop (compiled on
    # JAX, where a mask drawn inside the loop would fail).
    cell = sc.SuperloopCell(
        [sc.SGUCell(6, dropout=0.1, seed=1),
         keras.layers.GRUCell(6, dropout=0.1, recurrent_dropout=0.1, seed=2),
         sc.SGUCell(6, recurrent_dropout=0.2, seed=3)],
        [sc.RegisterMemory(registers=2, width=2)])
    inp = keras.Input((None, 2))
    out = keras.layers.Dense(1)(keras.layers.RNN(
        cell, return_sequences=True)(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 6, 2)).astype("float32")
    y = np.cumsum(x[..., :1], axis=1) / 3
    losses = model.fit(x, y, epochs=4, batch_size=16, verbose=0,
                       shuffle=False).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_regularizers_reach_model_losses():
    cell = sc.SuperloopCell(
        [sc.SGUCell(4, kernel_regularizer=keras.regularizers.L2(0.1),
                    recurrent_regularizer=keras.regularizers.L1(0.01)),
         sc.SGUCell(4, bias_regularizer=keras.regularizers.L2(0.5),
                    bias_initializer="ones")],
        [sc.RegisterMemory(registers=2, width=2)])
    model = rnn_model(cell, 3)
    first, second = cell.cells
    expected = (0.1 * np.sum(_numpy(first.kernel) ** 2)
                + 0.01 * np.sum(np.abs(_numpy(first.recurrent_kernel)))
                + 0.5 * np.sum(_numpy(second.bias) ** 2))
    x = np.zeros((2, 3, 3), "float32")
    model(x)
    total = sum(float(_numpy(loss)) for loss in model.losses)
    assert len(model.losses) == 3
    np.testing.assert_allclose(total, expected, rtol=1e-5)


def test_constraints_hold_after_a_training_step():
    cell = sc.SuperloopCell(
        [sc.SGUCell(4, kernel_constraint=keras.constraints.NonNeg(),
                    recurrent_constraint=keras.constraints.MaxNorm(0.5),
                    bias_constraint=keras.constraints.NonNeg())
         for _ in range(3)], fused=True)
    assert cell.fused_runs == 1
    inp = keras.Input((None, 2))
    model = keras.Model(inp, keras.layers.RNN(cell)(inp))
    model.compile(keras.optimizers.SGD(0.5), "mse")
    rng = np.random.default_rng(5)
    model.train_on_batch(rng.normal(size=(4, 3, 2)).astype("float32"),
                         rng.normal(size=(4, 4)).astype("float32"))
    for sgu in cell.cells:
        assert np.all(_numpy(sgu.kernel) >= 0)
        assert np.all(_numpy(sgu.bias) >= 0)
        norms = np.sqrt(np.sum(_numpy(sgu.recurrent_kernel) ** 2, axis=0))
        assert np.all(norms <= 0.5 + 1e-6), norms


def test_config_round_trips_every_keras_argument():
    cell = sc.SGUCell(
        3, kernel_initializer="he_normal", recurrent_initializer="identity",
        bias_initializer=keras.initializers.Constant(0.5),
        kernel_regularizer=keras.regularizers.L2(0.01),
        recurrent_regularizer="l1", bias_regularizer=None,
        kernel_constraint="non_neg",
        recurrent_constraint=keras.constraints.MaxNorm(2.0),
        dropout=0.25, recurrent_dropout=0.5, seed=11)
    config = cell.get_config()
    assert config["dropout"] == 0.25 and config["recurrent_dropout"] == 0.5
    assert config["seed"] == 11 and config["bias_regularizer"] is None
    clone = sc.SGUCell.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.recurrent_constraint, keras.constraints.MaxNorm)
    assert clone.recurrent_constraint.max_value == 2.0
    defaults = sc.SGUCell(3).get_config()
    assert defaults["dropout"] == 0.0 and defaults["seed"] is None
    assert defaults["kernel_regularizer"] is None


@pytest.mark.parametrize("kwargs, error, name", [
    ({"dropout": 1.0}, ValueError, "dropout"),
    ({"dropout": -0.1}, ValueError, "dropout"),
    ({"recurrent_dropout": "0.1"}, ValueError, "recurrent_dropout"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"kernel_regularizer": "no_such_regularizer"}, ValueError, ""),
])
def test_bad_keras_arguments_are_refused(kwargs, error, name):
    with pytest.raises(error, match=f"`{name}`" if name else None):
        sc.SGUCell(3, **kwargs)
