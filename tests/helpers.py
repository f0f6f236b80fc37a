"""Shared test helpers: weights out of a cell, small models, randomising."""

import keras
import numpy as np

import superloop_cell as sc
from superloop_cell.stages import CellStage, SGURunStage


def sgu_layers(cell):
    """Every SGU layer's (kernel, recurrent_kernel, bias) as float64 arrays."""
    layers = []
    for stage in cell._stages:
        if isinstance(stage, SGURunStage):
            k = keras.ops.convert_to_numpy(stage.stack.kernel)
            r = keras.ops.convert_to_numpy(stage.stack.recurrent_kernel)
            b = keras.ops.convert_to_numpy(stage.stack.bias)
            layers.extend(zip(k, r, b))
        else:
            assert isinstance(stage, CellStage)
            c = stage.cell
            layers.append(tuple(keras.ops.convert_to_numpy(w) for w in
                                (c.kernel, c.recurrent_kernel, c.bias)))
    return [tuple(np.asarray(a, np.float64) for a in layer) for layer in layers]


def randomize(layer, scale=0.5, seed=0):
    """Sets every weight of `layer` to random normal values (biases too)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0, scale, w.shape).astype(w.dtype))


def rnn_model(cell, features, steps=None, **rnn_kwargs):
    inp = keras.Input((steps, features))
    out = keras.layers.RNN(cell, **rnn_kwargs)(inp)
    return keras.Model(inp, out)


def copy_weights_unfused_to_fused(unfused, fused):
    """Copies an unfused superloop's weights into a fused one of one layout."""
    layers = sgu_layers(unfused)
    i = 0
    for stage in fused._stages:
        if isinstance(stage, SGURunStage):
            n = stage.stack.depth
            chunk = layers[i : i + n]
            stage.stack.kernel.assign(np.stack([c[0] for c in chunk]))
            stage.stack.recurrent_kernel.assign(np.stack([c[1] for c in chunk]))
            stage.stack.bias.assign(np.stack([c[2] for c in chunk]))
            i += n
        else:
            c = stage.cell
            for w, v in zip((c.kernel, c.recurrent_kernel, c.bias), layers[i]):
                w.assign(v)
            i += 1
    if unfused.systems:
        fused.control_kernel.assign(unfused.control_kernel)
        fused.control_bias.assign(unfused.control_bias)


def sgu_superloop(depth=3, units=6, systems=None, fused=True):
    return sc.SuperloopCell(
        [sc.SGUCell(units) for _ in range(depth)],
        systems if systems is not None else [sc.RegisterMemory(3, 4)],
        fused=fused,
    )
