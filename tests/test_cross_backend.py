"""A model saved under one backend predicts the same under the others.

The `.keras` file goes around all three backends, saved again on each:
this backend → the other two in turn → back here. Across the three CI
suites every backend loads what each of the others saved."""

import os
import subprocess
import sys

import keras
import numpy as np

import superloop_cell as sc
from helpers import randomize

BACKENDS = ("jax", "tensorflow", "torch")
SCRIPT = os.path.join(os.path.dirname(__file__), "other_backend_check.py")


def _load_predict_and_save(backend, model, inputs, outputs, resaved):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, SCRIPT, str(model), str(inputs), str(outputs),
         str(resaved)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"predicted on {backend}" in result.stdout
    return np.load(outputs)


def test_saved_model_goes_around_the_backends_and_predicts_the_same(tmp_path):
    cell = sc.SuperloopCell([sc.SGUCell(6) for _ in range(6)],
                            [sc.RegisterMemory(registers=2, width=3), sc.Attention(positions=4, width=1),
                             sc.NeuralStack(width=2, capacity=3),
                             sc.Attention(positions=4, width=1, falloff="gaussian",
                                          sharpness=3.0, normalize=True,
                                          integer_moves=True),
                             sc.HardAttention(positions=4, width=1)], fused=True)
    seq = keras.Input((None, 2))
    data = keras.Input((4, 1))
    # The three heads walk over the same data.
    states = sc.initial_state(cell, seq, [data, data, data])
    out = keras.layers.RNN(cell, return_sequences=True)(
        seq, initial_state=states)
    model = keras.Model([seq, data], out)
    randomize(cell, seed=2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 7, 2)).astype("f4")
    d = rng.normal(size=(2, 4, 1)).astype("f4")
    expected = model.predict([x, d], verbose=0)
    here = keras.backend.backend()
    path = tmp_path / f"{here}.keras"
    model.save(path)
    np.savez(tmp_path / "in.npz", x=x, d=d)
    for other in [b for b in BACKENDS if b != here]:
        resaved = tmp_path / f"{other}.keras"
        predicted = _load_predict_and_save(
            other, path, tmp_path / "in.npz", tmp_path / f"{other}.npy",
            resaved)
        np.testing.assert_allclose(predicted, expected, atol=1e-5,
                                   err_msg=f"saved by {path.stem}, "
                                           f"predicted on {other}")
        path = resaved
    back = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(back.predict([x, d], verbose=0), expected,
                               atol=1e-5)
