"""`FeedForwardCell`: a controller layer with no state of its own.

One step, with `x` the input:

    y = activation(x · kernel + bias)

In a `SuperloopCell` the input is `[x_t, feedback_{t−1}]`, so whatever the
network carries from one step to the next goes through its external
systems: the feed-forward controller of the Neural Turing Machine (Graves
et al. 2014, §3), which cannot keep a sequence in its own state and so has
to learn to use the memory.
"""

import keras
from keras import ops

from superloop_cell import _validation
from superloop_cell.cells._weight_options import weight_options_config


@keras.saving.register_keras_serializable(package="superloop_cell")
class FeedForwardCell(keras.layers.Layer):
    """A dense layer shaped as an RNN cell with no state, for the stack of a
    `SuperloopCell`.

    Its `state_size` is `[]`: it is meant to sit in a superloop's stack,
    where the systems' feedback is the memory; a `keras.layers.RNN` around
    it alone would have no state to carry (use `keras.layers.Dense` on the
    sequence instead).

    Args:
        units: Positive integer, width of the output.
        activation: Activation of the output (a name or a callable).
            Default `"tanh"`.
        kernel_initializer: Initializer of `kernel`. Default
            `"glorot_uniform"`.
        bias_initializer: Initializer of `bias`. Default `"zeros"`.
        kernel_regularizer, bias_regularizer: Regularizers of the two
            weights. Default None.
        kernel_constraint, bias_constraint: Constraints the optimizer
            applies to the two weights after each update. Default None.
        **kwargs: Base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Weights:
        kernel: `(input_dim, units)`.
        bias: `(units,)`.

    Call arguments:
        inputs: `(batch, input_dim)`, one time step.
        states: `[]` (ignored).
        training: Unused.

    Output shape:
        `(y, [])`, `y` of shape `(batch, units)`.

    Example:

    >>> cell = SuperloopCell([FeedForwardCell(32)],
    ...                      [ContentMemory(slots=16, width=8)])
    >>> keras.layers.RNN(cell)(np.zeros((2, 5, 3), "float32")).shape
    TensorShape([2, 32])
    """

    def __init__(
        self,
        units,
        activation="tanh",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _validation.positive_int("units", units)
        try:
            self.activation = keras.activations.get(activation)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "Received an invalid value for argument `activation`: "
                f"expected an activation name or a callable, got "
                f"{activation!r}."
            ) from error
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.state_size = []
        self.output_size = self.units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.units,),
            initializer=self.bias_initializer,
            regularizer=self.bias_regularizer,
            constraint=self.bias_constraint,
            name="bias",
        )

    def call(self, inputs, states=(), training=False):
        return self.activation(ops.matmul(inputs, self.kernel) + self.bias), []

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            **weight_options_config(self, ("kernel", "bias")),
        }
