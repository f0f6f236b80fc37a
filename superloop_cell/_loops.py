"""`scan_layers`: the loop over the stacked layers inside one superloop step.

This is the only place that knows a backend. The maths stays in `keras.ops`;
only the looping construct differs:

- TensorFlow: `tf.while_loop` with `maximum_iterations` set and fixed-size
  `TensorArray`s. `keras.ops.scan` leaves the iteration count open, which
  XLA (`jit_compile=True`) rejects once the loop is differentiated inside the
  RNN's own loop.
- Other backends: `keras.ops.scan` (JAX lowers it to `lax.scan`).
"""

import keras
from keras import ops


def scan_layers(step, carry, xs, length, y_width):
    """Runs `carry, y = step(carry, x)` over the leading axis of `xs`.

    Args:
        step: `(carry, x) -> (new_carry, y)`, `y` of shape
            `(batch, y_width)`.
        carry: tensor, the initial carry.
        xs: tuple of tensors with leading axis `length`.
        length: Python int, the number of iterations.
        y_width: Python int, the width of each `y`.

    Returns:
        `(final_carry, ys)` with `ys` stacked along a new leading axis.
    """
    if keras.backend.backend() != "tensorflow":
        return ops.scan(step, carry, xs, length=length)
    import tensorflow as tf

    ys = tf.TensorArray(
        carry.dtype,
        size=length,
        element_shape=(carry.shape[0], y_width),
        infer_shape=True,
    )

    def body(i, carry, ys):
        x = tuple(tf.gather(a, i) for a in xs)
        carry, y = step(carry, x)
        return i + 1, carry, ys.write(i, y)

    _, carry, ys = tf.while_loop(
        lambda i, carry, ys: i < length,
        body,
        (tf.constant(0, "int32"), carry, ys),
        maximum_iterations=length,
    )
    return carry, ys.stack()
