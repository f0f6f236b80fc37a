"""Shared test helpers: weights out of a cell, small models, randomising,
and gradients on any backend."""

import contextlib

import keras
import numpy as np
import pytest

import superloop_cell as sc
from superloop_cell.stages import is_sgu

BACKEND = keras.backend.backend()
TENSORFLOW = BACKEND == "tensorflow"
TORCH = BACKEND == "torch"

# TensorFlow-only tooling (TensorBoard writers and graphs, SavedModel
# export, tf.distribute): skipped on other backends, and only these.
tensorflow_only = pytest.mark.skipif(
    not TENSORFLOW,
    reason="TensorFlow-only feature (TensorBoard tooling, SavedModel "
           "export, tf.distribute or TensorFlow graphs)",
)


@contextlib.contextmanager
def float64(floatx=True):
    """Float64 maths for a finite-difference check, on every backend.

    Sets Keras' floatx to float64 (with `floatx`), turns on JAX's 64-bit
    mode on JAX, and on torch lifts Keras' type-promotion rule that maps
    float64 to float32 on every backend but TensorFlow
    (`keras.src.backend.common.dtypes.BIT64_TO_BIT32_DTYPE`, which follows
    JAX's default): under it `keras.ops.matmul` of two float64 tensors
    computes in float32 on torch, and finite differences of 1e-6 vanish.
    """
    from keras.src.backend.common import dtypes

    previous = dtypes.BIT64_TO_BIT32_DTYPE.get("float64")
    if floatx:
        keras.config.set_floatx("float64")
    if BACKEND == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
    if TORCH:
        dtypes.BIT64_TO_BIT32_DTYPE["float64"] = "float64"
    try:
        yield
    finally:
        keras.config.set_floatx("float32")
        if BACKEND == "jax":
            jax.config.update("jax_enable_x64", False)
        if TORCH:
            dtypes.BIT64_TO_BIT32_DTYPE["float64"] = previous


def value_and_gradients(fn, variables=(), inputs=(), compiled=False):
    """`fn(*inputs)` (a scalar) and its gradients, on any backend.

    Args:
        fn: Function of the `inputs` that may read Keras variables.
        variables: Keras variables to differentiate with respect to.
        inputs: Arrays passed to `fn`, also differentiated.
        compiled: Whether to run it as one graph (`tf.function` on
            TensorFlow, `jax.jit` on JAX) rather than op by op: much
            faster for long sequences, where TensorFlow's eager loop runs
            Python at every step. Ignored on torch, which always runs op
            by op (eager autograd).

    Returns:
        `(value, variable_grads, input_grads)` as NumPy arrays; a gradient
        that does not depend on the variable or input is zeros.
    """
    variables, inputs = list(variables), list(inputs)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def taped(*tensors):
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(tensors)
                value = fn(*tensors)
            grads = tape.gradient(
                value, variables + list(tensors),
                unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return value, grads

        if compiled:
            taped = tf.function(taped)
        value, grads = taped(*[tf.convert_to_tensor(x) for x in inputs])
        grads = [np.asarray(g) for g in grads]
        return np.asarray(value), grads[:len(variables)], grads[len(variables):]
    if BACKEND == "torch":
        return _torch_value_and_gradients(fn, variables, inputs)
    import jax

    def pure(values, xs):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*xs)

    grad_fn = jax.value_and_grad(pure, argnums=(0, 1))
    if compiled:
        grad_fn = jax.jit(grad_fn)
    value, (d_vars, d_inputs) = grad_fn(
        [v.value for v in variables], [jax.numpy.asarray(x) for x in inputs])
    return (np.asarray(value), [np.asarray(g) for g in d_vars],
            [np.asarray(g) for g in d_inputs])


def _torch_value_and_gradients(fn, variables, inputs):
    # Fresh leaf tensors stand in for the variables (as on JAX), so a
    # variable Keras made without `requires_grad` (not trainable) is
    # differentiated too.
    import torch

    def leaf(x):
        tensor = keras.ops.convert_to_tensor(x)
        return tensor.detach().clone().requires_grad_(True)

    values = [leaf(v.value) for v in variables]
    tensors = [leaf(x) for x in inputs]
    with keras.StatelessScope(state_mapping=list(zip(variables, values))):
        value = fn(*tensors)
    leaves = values + tensors
    if value.requires_grad:
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    else:  # `fn` depends on none of them (through a stop_gradient, say).
        grads = [None] * len(leaves)
    grads = [torch.zeros_like(x) if g is None else g
             for x, g in zip(leaves, grads)]
    grads = [to_numpy(g) for g in grads]
    return to_numpy(value), grads[:len(variables)], grads[len(variables):]


def compiled_value(fn, variables):
    """`fn()` compiled once, reading `variables`' values at every call.

    For finite differences: assign a perturbed value to a variable, call
    the result, and the compiled graph sees the new value without being
    traced again. `tf.function` on TensorFlow; on JAX, `jax.jit` of `fn`
    with the variables' values as arguments; on torch not compiled: `fn`
    run eagerly without recording gradients, so every call reads the
    variables as they are.
    """
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    if BACKEND == "torch":
        import torch

        def eager():
            with torch.no_grad():
                return fn()

        return eager
    import jax

    @jax.jit
    def pure(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn()

    return lambda: pure([v.value for v in variables])


def to_numpy(x):
    """`x` (a tensor of any backend, one that records gradients included,
    or a nest of them) as NumPy arrays."""
    return keras.tree.map_structure(keras.ops.convert_to_numpy, x)


def sgu_layers(cell):
    """Every layer's weights as float64 arrays: (kernel, recurrent_kernel,
    bias) for an SGU layer, (kernel, bias) for a `FeedForwardCell` (the
    layouts of `reference.superloop_run`)."""
    layers = []
    for c in cell.cells:
        if isinstance(c, sc.FeedForwardCell):
            weights = (c.kernel, c.bias)
        else:
            assert is_sgu(c)
            weights = (c.kernel, c.recurrent_kernel, c.bias)
        layers.append(tuple(np.asarray(keras.ops.convert_to_numpy(w),
                                       np.float64) for w in weights))
    return layers


def randomize(layer, scale=0.5, seed=0):
    """Sets every float weight of `layer` to random normal values (biases
    too); seed-generator states are left alone."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if w.trainable:
            w.assign(rng.normal(0, scale, w.shape).astype(w.dtype))


def rnn_model(cell, features, steps=None, **rnn_kwargs):
    inp = keras.Input((steps, features))
    out = keras.layers.RNN(cell, **rnn_kwargs)(inp)
    return keras.Model(inp, out)


def sgu_superloop(depth=3, units=6, systems=None, fused=True):
    return sc.SuperloopCell(
        [sc.SGUCell(units) for _ in range(depth)],
        systems if systems is not None else [sc.RegisterMemory(registers=3, width=4)],
        fused=fused,
    )
