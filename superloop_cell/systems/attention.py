"""A soft read head that walks over per-sample data."""

import keras
from keras import ops

from superloop_cell import _validation
from superloop_cell.systems._precision import computes_in_float32
from superloop_cell.systems.base import ExternalSystem

FALLOFFS = ("linear", "squared", "gaussian")


@keras.saving.register_keras_serializable(package="superloop_cell")
class Attention(ExternalSystem):
    """Attention head moving along `positions` slots of per-sample data.

    Control (1): how far to move. With `data` of shape
    `(batch, positions, width)` and `p_0 = 0`:

        p_t    = p_{t−1} + softsign(control)               (batch, 1)
        d_n    = sharpness · (p_t − n)      n = 0 … positions − 1
        w_n    = 1 / (1 + |d_n|)            (the "linear" falloff)
        output = Σ_n w_n · data_n                          (batch, width)

    The position is a state, so `keras.layers.RNN(..., return_state=True)`
    returns the final position. The data is a per-sample context: give it
    through `superloop_cell.initial_state(cell, sequences, data)`; it rides
    along, unchanged, as this system's last state.

    The control head starts with kernel uniform in [0, 0.1] and bias 0.9, so
    an untrained head walks forward by about half a position per step (with
    `integer_moves=True`: bias 1.5, one slot per step).

    Args:
        positions: Positive integer, number of data slots.
        width: Positive integer, values per slot.
        falloff: How a slot's weight falls with its distance `d_n`:
            `"linear"` (default) `1/(1 + |d|)`, `"squared"` `1/(1 + d²)`,
            `"gaussian"` `exp(−d²)`. The first two have long tails (at
            sharpness 1 the nearest slot gets only about a third of the
            normalised weight); the gaussian has none.
        sharpness: Positive float, the scale of the distance (default 1.0).
            Larger values read a narrower window: with `"gaussian"` and
            sharpness 3, a head on a slot reads that slot with weight
            0.9998 once normalised, and a head half-way between two slots
            reads their mean.
        normalize: Whether to divide the weights by their sum. Default
            False.
        clip_position: Whether to keep `p_t` in `[0, positions − 1]` (the
            gradient is zero where it is clipped). Default False. Beware
            with many steps: the untrained head moves about +0.47 per step,
            so after ~2·positions steps it sits clipped at the last slot
            and no gradient reaches the control.
        read_gradient: Whether the read passes gradients back to the
            position (default True). With False the weights `w_n` are
            computed from a stopped-gradient copy of `p_t`: what the head
            reads is an observation, and the position is trained only
            through its own path `p_t = p_{t−1} + softsign(control)` (each
            control moves every later position). With a sharp read the
            gradient through the weights is large near the midpoints
            between slots and near zero elsewhere, which can make training
            erratic with a sharp falloff.
        integer_moves: Whether each move is rounded to a whole number of
            slots, `p_t = p_{t−1} + round(softsign(control))` ∈ {−1, 0, +1},
            with the gradient of the unrounded move (a straight-through
            estimator). Default False. Starting from `p_0 = 0`, the head
            then always stands on a slot, so with a sharp falloff (e.g.
            `"gaussian"`, sharpness ≥ 3) it reads one slot's value exactly
            instead of a blend of neighbours; a move smaller than half a
            slot is no move.
        control_bias: None (default) or a dict from control field to float, the
            field's starting value in the superloop's `control_bias`. Fields
            (`control_layout`): `"move"`.
        **kwargs: Base `keras.layers.Layer` arguments.
    """

    def __init__(
        self,
        *args,
        positions=None,
        width=None,
        falloff="linear",
        normalize=False,
        clip_position=False,
        sharpness=1.0,
        read_gradient=True,
        integer_moves=False,
        **kwargs,
    ):
        _validation.keyword_only(
            "Attention", args, "Attention(positions=16, width=1)")
        super().__init__(**kwargs)
        self.positions = _validation.positive_int(
            "positions", _validation.required("positions", positions))
        self.width = _validation.positive_int(
            "width", _validation.required("width", width))
        self.falloff = _validation.choice("falloff", falloff, FALLOFFS)
        self.normalize = _validation.boolean("normalize", normalize)
        self.clip_position = _validation.boolean("clip_position", clip_position)
        self.sharpness = _validation.positive_float("sharpness", sharpness)
        self.read_gradient = _validation.boolean("read_gradient", read_gradient)
        self.integer_moves = _validation.boolean("integer_moves", integer_moves)
        self.control_size = 1
        self.output_size = self.width
        self.context_shape = (self.positions, self.width)
        self.state_size = [1, self.positions * self.width]
        self.trace_sizes = {"position": 1, "weights": self.positions}
        self.trace_labels = {"weights": "position"}
        self.control_kernel_initializer = keras.initializers.RandomUniform(
            0.0, 0.1
        )
        # softsign(0.9) ≈ 0.47 of a slot per step; softsign(1.5) = 0.6
        # rounds to one whole slot.
        self.control_bias_initializer = keras.initializers.Constant(
            1.5 if self.integer_moves else 0.9
        )
        self.check_control_layout()

    @property
    def control_layout(self):
        return [("move", 1)]

    def _position_and_weights(self, control, position):
        move = ops.softsign(control)
        if self.integer_moves:
            # Forward: the rounded move; backward: the gradient of `move`.
            move = move + ops.stop_gradient(ops.round(move) - move)
        position = position + move
        if self.clip_position:
            position = ops.clip(position, 0.0, float(self.positions - 1))
        slots = ops.arange(self.positions, dtype=position.dtype)
        read_at = position if self.read_gradient else ops.stop_gradient(position)
        distance = self.sharpness * (read_at - slots[None, :])
        if self.falloff == "linear":
            weights = 1.0 / (1.0 + ops.abs(distance))
        elif self.falloff == "squared":
            weights = 1.0 / (1.0 + ops.square(distance))
        elif self.normalize:
            # A softmax over −d², shifted by its largest term: a head far
            # outside the slots would otherwise underflow every weight to 0.
            square = ops.square(distance)
            nearest = ops.min(square, axis=-1, keepdims=True)
            weights = ops.exp(nearest - square)
        else:
            weights = ops.exp(-ops.square(distance))
        if self.normalize:
            weights = weights / ops.sum(weights, axis=-1, keepdims=True)
        return position, weights

    @computes_in_float32
    def call(self, control, states, training=False, traces=False):
        position, data = states
        position, weights = self._position_and_weights(control, position)
        data3 = ops.reshape(data, (-1, self.positions, self.width))
        output = ops.sum(weights[:, :, None] * data3, axis=1)
        if traces:
            return output, [position, data], {"position": position,
                                              "weights": weights}
        return output, [position, data]

    def get_config(self):
        return {
            **super().get_config(),
            "positions": self.positions,
            "width": self.width,
            "falloff": self.falloff,
            "normalize": self.normalize,
            "clip_position": self.clip_position,
            "sharpness": self.sharpness,
            "read_gradient": self.read_gradient,
            "integer_moves": self.integer_moves,
        }
