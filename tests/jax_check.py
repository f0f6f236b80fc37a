"""Run by test_jax_backend.py in a subprocess with KERAS_BACKEND=jax.

argv: model.keras inputs.npz outputs.npy
Loads a model saved under TensorFlow, predicts under JAX, and checks that the
fused run's hand-written gradient equals JAX's autodiff of the unfused cells.
"""

import sys

import keras
import numpy as np

import superloop_cell as sc

assert keras.backend.backend() == "jax", keras.backend.backend()
model_path, inputs_path, outputs_path = sys.argv[1:4]
inputs = np.load(inputs_path)
model = keras.saving.load_model(model_path, safe_mode=True)
np.save(outputs_path, model.predict([inputs["x"], inputs["d"]], verbose=0))

import jax  # noqa: E402

cells = {f: sc.SuperloopCell([sc.SGUCell(5) for _ in range(11)],
                             [sc.RegisterMemory(2, 3)], fused=f)
         for f in (False, True)}
layers = {f: keras.layers.RNN(c, return_sequences=True)
          for f, c in cells.items()}
x = np.random.default_rng(0).normal(size=(3, 6, 2)).astype("float32")
for layer in layers.values():
    layer(x)
rng = np.random.default_rng(1)
for w in cells[False].weights:
    w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
unfused, fused = cells[False], cells[True]
c1 = unfused.cells[0]
for dst, src in zip(fused.cells[0].weights, c1.weights):
    dst.assign(src)
stack = fused.fused_stacks[0]
for kind in ("kernel", "recurrent_kernel", "bias"):
    getattr(stack, kind).assign(np.stack(
        [np.asarray(getattr(c, kind)) for c in unfused.cells[1:]]))
fused.control_kernel.assign(unfused.control_kernel)
fused.control_bias.assign(unfused.control_bias)


def loss(values, layer, x):
    out, _ = layer.stateless_call(values, [], x)
    return (out ** 2).sum()


grads = {}
for f, layer in layers.items():
    values = [v.value for v in layer.trainable_variables]
    grads[f] = jax.grad(loss, argnums=(0, 2))(values, layer, x)
np.testing.assert_allclose(grads[False][1], grads[True][1], atol=1e-5)
by_path = {f: dict(zip([v.path for v in layers[f].trainable_variables],
                       grads[f][0])) for f in grads}
for kind in ("kernel", "recurrent_kernel", "bias"):
    expected = np.stack([by_path[False][getattr(c, kind).path]
                         for c in unfused.cells[1:]])
    np.testing.assert_allclose(
        by_path[True][getattr(stack, kind).path], expected, atol=1e-5)

# HardAttention predicts on JAX (above) but cannot sample inside the loop:
# training says so clearly.
cell = sc.SuperloopCell([sc.SGUCell(3)], [sc.HardAttention(4, 1, seed=0)])
steps = keras.Input((3, 0))
data = keras.Input((4, 1))
_, *final = keras.layers.RNN(cell, return_state=True)(
    steps, initial_state=sc.initial_state(cell, steps, data))
walker = keras.Model([steps, data], cell.system_states(final, 0)[1])
walker.compile("adam", lambda target, log_prob: -keras.ops.mean(log_prob))
try:
    walker.fit([np.zeros((4, 3, 0), "f4"), np.ones((4, 4, 1), "f4")],
               np.zeros((4, 1), "f4"), verbose=0)
except NotImplementedError as error:
    assert "TensorFlow backend" in str(error), error
else:
    raise AssertionError("HardAttention trained on JAX")
print("jax check ok")
