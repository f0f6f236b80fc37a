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

# What `keras.layers.RNN` looks for to draw a cell's dropout masks once per
# sequence (before its loop) and clear them after; Keras' own GRUCell and
# LSTMCell inherit it. Not exported by `keras.layers`.
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from superloop_cell import _validation
from superloop_cell.cells._weight_options import weight_options_config

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
class SGUCell(DropoutRNNCell, keras.layers.Layer):
    """Simple Gated Unit cell, for `keras.layers.RNN` or `SuperloopCell`.

    Its arguments are those of Keras' `GRUCell`, with the same meanings and
    defaults.

    Args:
        units: Positive integer, width of the state and the output.
        kernel_initializer: Initializer of `kernel`. Default
            `"glorot_uniform"`.
        recurrent_initializer: Initializer of `recurrent_kernel`. Default
            `"orthogonal"`.
        bias_initializer: Initializer of `bias`. Default `"zeros"`.
        kernel_regularizer, recurrent_regularizer, bias_regularizer:
            Regularizers of the three weights (their losses reach
            `model.losses`). Default None.
        kernel_constraint, recurrent_constraint, bias_constraint:
            Constraints the optimizer applies to the three weights after
            each update. Default None.
        dropout: Float in [0, 1): the fraction of the input units dropped
            in training, one mask per sequence (the same at every step).
            Default 0.
        recurrent_dropout: Float in [0, 1): the fraction of `h` dropped in
            the recurrent product `h · recurrent_kernel` in training, one
            mask per sequence. Default 0.
        seed: Optional int, the seed of the dropout masks.
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Weights:
        kernel: `(input_dim, 2·units)`, [gate | candidate].
        recurrent_kernel: `(units, units)`, acts on the gate only.
        bias: `(2·units,)`.

    Call arguments:
        inputs: `(batch, input_dim)`, one time step.
        states: `[h]` with `h` of shape `(batch, units)` (a bare tensor is
            accepted too).
        training: Whether dropout is applied.

    Output shape:
        `(h', [h'])`, each `(batch, units)`.

    In a `SuperloopCell`, a fused run of `SGUCell`s computes a step with
    dropout in training cell by cell (the unfused computation, the same
    masks); outside training, or without dropout, it stays fused.

    Example:

    >>> layer = keras.layers.RNN(SGUCell(16, dropout=0.1))
    >>> layer(np.zeros((2, 5, 3), "float32")).shape
    TensorShape([2, 16])
    """

    def __init__(
        self,
        units,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout=0.0,
        recurrent_dropout=0.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _validation.positive_int("units", units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(
            recurrent_initializer
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(
            recurrent_regularizer
        )
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(
            recurrent_constraint
        )
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.dropout = _dropout_rate("dropout", dropout)
        self.recurrent_dropout = _dropout_rate("recurrent_dropout",
                                               recurrent_dropout)
        self.seed = _validation.optional_int("seed", seed)
        # The masks' random state (a non-trainable variable), only in a
        # cell that drops something: a cell without dropout keeps the
        # weights, and the checkpoints, it always had.
        self.seed_generator = (keras.random.SeedGenerator(seed)
                               if self.has_dropout else None)
        self.state_size = self.units
        self.output_size = self.units

    @property
    def has_dropout(self):
        """Whether the cell drops anything in training."""
        return self.dropout > 0 or self.recurrent_dropout > 0

    def build(self, input_shape):
        input_dim = input_shape[-1]
        self.kernel = self.add_weight(
            shape=(input_dim, 2 * self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            name="kernel",
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, self.units),
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
            name="recurrent_kernel",
        )
        self.bias = self.add_weight(
            shape=(2 * self.units,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
            name="bias",
        )

    def call(self, inputs, states, training=False):
        h_new, _ = self.step(inputs, states, training=training)
        return h_new, [h_new]

    def step(self, inputs, states, training=False):
        """One step that also returns the gate: `(h', f)`, each
        `(batch, units)`; `call` returns `(h', [h'])`."""
        h = states[0] if isinstance(states, (list, tuple)) else states
        recurrent_input = h
        if training and self.dropout > 0:
            inputs = inputs * self.get_dropout_mask(inputs)
        if training and self.recurrent_dropout > 0:
            recurrent_input = h * self.get_recurrent_dropout_mask(h)
        z = ops.matmul(inputs, self.kernel) + self.bias
        # A split, not two slices: its gradient is one concatenation, a
        # slice's a zero-filled tensor of z's size.
        z_gate, z_candidate = ops.split(z, 2, axis=-1)
        h_new, s, _ = sgu_step(
            z_gate + ops.matmul(recurrent_input, self.recurrent_kernel),
            z_candidate, h,
        )
        return h_new, 1.0 - s

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    def get_config(self):
        config = {**super().get_config(), "units": self.units,
                  **weight_options_config(
                      self, ("kernel", "recurrent", "bias"))}
        config.update(dropout=self.dropout,
                      recurrent_dropout=self.recurrent_dropout,
                      seed=self.seed)
        return config


def _dropout_rate(name, value):
    rate = _validation.non_negative_float(name, value)
    if rate >= 1:
        raise ValueError(
            f"Received an invalid value for argument `{name}`: expected a "
            f"fraction in [0, 1), got {value!r}."
        )
    return rate
