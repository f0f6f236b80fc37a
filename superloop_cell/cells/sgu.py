"""The Simple Gated Unit (SGU), the recurrent cell of the superloop stack.

One step, with `x` the input, `h` the state and `units` its width:

    z  = x · kernel + bias                                  (batch, 2·units)
    f  = (softsign(z[:, :units] + h · recurrent_kernel) + 1) / 2
    c  = leaky_relu(z[:, units:], negative_slope=0.1)
    h' = (1 − f) · c + f · h

`kernel` holds [gate | candidate] side by side, so the input projection of a
whole sequence can be computed with one matrix product.
"""

import keras
from keras import ops

from superloop_cell import _validation

CANDIDATE_NEGATIVE_SLOPE = 0.1


def sgu_step(gate_preactivation, candidate_preactivation, h):
    """The SGU step from its pre-activations: the one copy of its maths.

    `SGUCell`, the fused run of `cells/sgu_run.py` and the gate traces all
    call this function.

    Args:
        gate_preactivation: `a = z[:, :units] + h · recurrent_kernel`,
            shape `(batch, units)`.
        candidate_preactivation: `z[:, units:]`, shape `(batch, units)`.
        h: the previous state, shape `(batch, units)`.

    Returns:
        `(h', s, c)`, each `(batch, units)`: the new state (also the
        output), `s = 1 − f = (1 − softsign(a)) / 2` and the candidate
        `c = leaky_relu(z[:, units:], 0.1)`, so that `h' = h + s · (c − h)`.
    """
    s = 0.5 - 0.5 * ops.softsign(gate_preactivation)
    c = ops.leaky_relu(
        candidate_preactivation, negative_slope=CANDIDATE_NEGATIVE_SLOPE
    )
    return h + s * (c - h), s, c


@keras.saving.register_keras_serializable(package="superloop_cell")
class SGUCell(keras.layers.Layer):
    """Simple Gated Unit cell, for `keras.layers.RNN` or `SuperloopCell`.

    Args:
        units: Positive integer, width of the state and the output.
        kernel_initializer: Initializer of `kernel`. Default
            `"glorot_uniform"`.
        recurrent_initializer: Initializer of `recurrent_kernel`. Default
            `"orthogonal"`.
        bias_initializer: Initializer of `bias`. Default `"zeros"`.
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Weights:
        kernel: `(input_dim, 2·units)`, [gate | candidate].
        recurrent_kernel: `(units, units)`, acts on the gate only.
        bias: `(2·units,)`.

    Call arguments:
        inputs: `(batch, input_dim)`, one time step.
        states: `[h]` with `h` of shape `(batch, units)` (a bare tensor is
            accepted too).
        training: Unused; accepted for the cell protocol.

    Output shape:
        `(h', [h'])`, each `(batch, units)`.

    Example:

    >>> layer = keras.layers.RNN(SGUCell(16))
    >>> layer(np.zeros((2, 5, 3), "float32")).shape
    TensorShape([2, 16])
    """

    def __init__(
        self,
        units,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _validation.positive_int("units", units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(
            recurrent_initializer
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.state_size = self.units
        self.output_size = self.units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, 2 * self.units),
            initializer=self.kernel_initializer,
            name="kernel",
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, self.units),
            initializer=self.recurrent_initializer,
            name="recurrent_kernel",
        )
        self.bias = self.add_weight(
            shape=(2 * self.units,),
            initializer=self.bias_initializer,
            name="bias",
        )

    def call(self, inputs, states, training=False):
        h_new, _ = self.step(inputs, states)
        return h_new, [h_new]

    def step(self, inputs, states):
        """One step that also returns the gate: `(h', f)`, each
        `(batch, units)`; `call` returns `(h', [h'])`."""
        h = states[0] if isinstance(states, (list, tuple)) else states
        z = ops.matmul(inputs, self.kernel) + self.bias
        # A split, not two slices: its gradient is one concatenation, a
        # slice's a zero-filled tensor of z's size.
        z_gate, z_candidate = ops.split(z, 2, axis=-1)
        h_new, s, _ = sgu_step(
            z_gate + ops.matmul(h, self.recurrent_kernel), z_candidate, h
        )
        return h_new, 1.0 - s

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer
            ),
            "recurrent_initializer": keras.initializers.serialize(
                self.recurrent_initializer
            ),
            "bias_initializer": keras.initializers.serialize(
                self.bias_initializer
            ),
        }
