"""A model saved under one backend predicts the same under the other."""

import os
import subprocess
import sys

import keras
import numpy as np

import superloop_cell as sc
from helpers import randomize

OTHER = {"tensorflow": "jax", "jax": "tensorflow"}


def test_saved_model_predicts_the_same_on_the_other_backend(tmp_path):
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
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "in.npz", x=x, d=d)
    other = OTHER[keras.backend.backend()]
    env = {**os.environ, "KERAS_BACKEND": other, "JAX_PLATFORMS": "cpu"}
    script = os.path.join(os.path.dirname(__file__), "other_backend_check.py")
    result = subprocess.run(
        [sys.executable, script, str(tmp_path / "m.keras"),
         str(tmp_path / "in.npz"), str(tmp_path / "out.npy")],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"predicted on {other}" in result.stdout
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"),
                               model.predict([x, d], verbose=0), atol=1e-5)
