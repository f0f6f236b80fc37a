"""What a Keras user does with an RNN layer, with a SuperloopCell inside:
Bidirectional (and saving it), go_backwards, mixed precision, clone_model,
BackupAndRestore, stateful streaming."""

import keras
import numpy as np
import pytest

import superloop_cell as sc
from helpers import TENSORFLOW, randomize

ATOL = 1e-5


def _cell():
    return sc.SuperloopCell([sc.SGUCell(4), sc.SGUCell(4)],
                            [sc.RegisterMemory(registers=2, width=3)])


def _data(batch=8, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, steps, 2)).astype("f4")
    return x, np.cumsum(x[..., :1], axis=1).astype("f4")


def test_bidirectional_runs_both_ways_and_saves(tmp_path):
    inp = keras.Input((None, 2))
    out = keras.layers.Bidirectional(keras.layers.RNN(
        _cell(), return_sequences=True))(inp)
    model = keras.Model(inp, out)
    randomize(model, seed=1)
    x, _ = _data()
    y = model.predict(x, verbose=0)
    assert y.shape == (8, 5, 8)
    # The backward half is its layer (go_backwards=True) run alone, its
    # outputs put back in time order.
    backward = model.layers[1].backward_layer
    assert backward.go_backwards
    alone = keras.ops.convert_to_numpy(backward(x))
    np.testing.assert_allclose(y[..., 4:], alone[:, ::-1], atol=ATOL)
    model.save(tmp_path / "bi.keras")
    loaded = keras.saving.load_model(tmp_path / "bi.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), y, atol=ATOL)


def test_go_backwards_equals_the_reversed_sequence():
    x, _ = _data()
    forward = keras.layers.RNN(_cell(), return_sequences=True)
    backward = keras.layers.RNN(_cell(), return_sequences=True,
                                go_backwards=True)
    forward(x)
    backward(x)
    randomize(forward, seed=2)
    backward.set_weights(forward.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(backward(x)),
                               keras.ops.convert_to_numpy(forward(
                                   x[:, ::-1])), atol=ATOL)


@pytest.mark.parametrize("first", ["sgu", "feed_forward"])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_finite_losses(policy, first):
    keras.config.set_dtype_policy(policy)
    try:
        head = sc.SGUCell(4) if first == "sgu" else sc.FeedForwardCell(5)
        cell = sc.SuperloopCell([head, sc.SGUCell(4), sc.SGUCell(4)],
                                [sc.RegisterMemory(registers=2, width=3), sc.NeuralStack(width=2, capacity=3)],
                                fused=True)
        inp = keras.Input((None, 2))
        rnn = keras.layers.RNN(cell, return_sequences=True)(inp)
        out = keras.layers.Dense(1, dtype="float32")(rnn)
        model = keras.Model(inp, out)
        assert cell.compute_dtype == policy.split("_")[1]
        assert cell.cells[1].kernel.dtype == "float32"
        assert head.kernel.dtype == "float32"
        assert head.compute_dtype == policy.split("_")[1]
        model.compile("adam", "mse")
        x, y = _data(batch=32, steps=6)
        history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def test_clone_model_gives_a_fresh_cell_of_the_same_config():
    inp = keras.Input((None, 2))
    model = keras.Model(inp, keras.layers.RNN(_cell())(inp))
    clone = keras.models.clone_model(model)
    a, b = model.layers[-1].cell, clone.layers[-1].cell
    assert a is not b and a.get_config()["fused"] == b.get_config()["fused"]
    assert [w.shape for w in model.weights] == [w.shape for w in clone.weights]
    clone.set_weights(model.get_weights())
    x, _ = _data()
    np.testing.assert_allclose(clone.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=ATOL)


class _CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.crash_epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.crash_epoch:
            raise RuntimeError("simulated crash")


def _model():
    keras.utils.set_random_seed(5)
    inp = keras.Input((None, 2))
    out = keras.layers.Dense(1)(keras.layers.RNN(
        _cell(), return_sequences=True)(inp))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(0.05), "mse")
    return model


def test_backup_and_restore_resumes_on_the_same_loss_curve(tmp_path):
    x, y = _data(batch=16)
    straight = _model().fit(x, y, epochs=4, batch_size=8, shuffle=False,
                            verbose=0).history["loss"]
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        _model().fit(x, y, epochs=4, batch_size=8, shuffle=False,
                     verbose=0, callbacks=[backup, _CrashAt(2)])
    resumed = _model().fit(x, y, epochs=4, batch_size=8, shuffle=False,
                           verbose=0, callbacks=[backup]).history["loss"]
    # The resumed run starts at epoch 2 with the weights saved after it.
    assert len(resumed) == 2
    np.testing.assert_allclose(resumed, straight[2:], rtol=1e-4)


def test_stateful_streaming_equals_one_long_sequence():
    x, _ = _data(batch=2, steps=8)
    whole = keras.layers.RNN(_cell(), return_sequences=True)
    whole(x)
    randomize(whole, seed=3)
    expected = keras.ops.convert_to_numpy(whole(x))
    stream = keras.layers.RNN(_cell(), return_sequences=True, stateful=True)
    stream(x[:, :4])
    stream.set_weights(whole.get_weights())
    stream.reset_states()
    parts = [keras.ops.convert_to_numpy(stream(x[:, i:i + 4]))
             for i in (0, 4)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), expected,
                               atol=ATOL)
