"""`scan`: the loop over stacked layers, the only backend-aware piece.

The maths stays in `keras.ops`; only the looping construct differs. On
TensorFlow, `keras.ops.scan` requires every per-iteration output to match the
carry and leaves the iteration count open (which XLA rejects inside another
loop), so this module writes the loop with `tf.while_loop` and fixed-size
`TensorArray`s. Other backends use `keras.ops.scan` (JAX: `lax.scan`).
"""

import keras
from keras import ops


def scan(step, carry, xs, length, reverse=False):
    """`carry, ys = step(carry, x)` over the leading axis of `xs`.

    Args:
        step: `(carry, x) -> (carry, ys)`; `x` is a tuple (one slice of each
            of `xs`), `ys` a tuple of tensors.
        carry: A tensor.
        xs: Tuple of tensors whose leading axis has `length` entries.
        length: Python int.
        reverse: Whether to run from the last entry to the first (`ys` are
            still stored in the order of `xs`).

    Returns:
        `(carry, ys)`, each of `ys` stacked along a new leading axis.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.scan(step, carry, tuple(xs), length=length, reverse=reverse)
    import tensorflow as tf

    # Trace the step once to learn the shapes and dtypes of its outputs.
    probe = tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape[1:], t.dtype), tuple(xs)
    )
    out_specs = tf.function(step).get_concrete_function(
        tf.TensorSpec(carry.shape, carry.dtype), probe
    ).structured_outputs[1]
    arrays = tuple(
        tf.TensorArray(spec.dtype, size=length, element_shape=spec.shape)
        for spec in out_specs
    )

    def body(i, carry, arrays):
        index = length - 1 - i if reverse else i
        x = tuple(tf.gather(a, index) for a in xs)
        carry, ys = step(carry, x)
        arrays = tuple(a.write(index, y) for a, y in zip(arrays, ys))
        return i + 1, carry, arrays

    _, carry, arrays = tf.while_loop(
        lambda i, carry, arrays: i < length,
        body,
        (tf.constant(0, "int32"), carry, arrays),
        maximum_iterations=length,
    )
    return carry, tuple(a.stack() for a in arrays)


def loop_invariant(compute):
    """`compute()`, built outside the TensorFlow while loop being traced.

    A cell's step runs inside the RNN's loop; a value that does not change
    from step to step (the stacked weights of a fused SGU run) is then
    recomputed every step, and TensorFlow's loop gradient keeps one
    accumulator per variable it reads. Built in the graph around the loop,
    the loop captures one tensor and its gradient is accumulated once. On
    other backends (and eagerly) this is `compute()`: XLA hoists loop
    invariants itself.
    """
    if keras.backend.backend() != "tensorflow":
        return compute()
    import tensorflow as tf

    graph = tf.compat.v1.get_default_graph()
    outer = graph
    while type(outer).__name__ == "WhileBodyFuncGraph":
        outer = outer.outer_graph
    if outer is graph:
        return compute()
    with outer.as_default():
        return compute()
