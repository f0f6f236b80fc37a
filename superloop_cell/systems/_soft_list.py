"""What `NeuralStack` and `NeuralQueue` share: a bounded list of soft
elements, popped and read from one end (Grefenstette et al. 2015)."""

from keras import ops

from superloop_cell import _validation
from superloop_cell.systems import _soft_ops
from superloop_cell.systems._precision import computes_in_float32
from superloop_cell.systems.base import ExternalSystem


def soft_list_step(push, pop, value, strengths, values, cover):
    """One step of a bounded stack or queue: pop, then push, then read.

    Args:
        push: `d_t`, (batch, 1), in [0, 1].
        pop: `u_t`, (batch, 1), in [0, 1].
        value: `v_t`, (batch, width).
        strengths: `s_{t−1}`, (batch, K), oldest first.
        values: `V_{t−1}`, (batch, K, width), oldest first.
        cover: The end that pops and reads work from, as the strength in
            front of each slot: `_soft_ops.strength_above` (the newest end:
            a stack) or `_soft_ops.strength_below` (the oldest end: a queue).

    Returns:
        `(strengths, values, read_weights, read)`: `s_t` (batch, K), `V_t`
        (batch, K, width), `w_t` (batch, K) and `r_t` (batch, width).
    """
    popped = _soft_ops.pop(strengths, pop, cover)
    # The shift register: the oldest slot is dropped (after the pop, which
    # may spend on it what it sees) and the new element enters at the end.
    strengths = ops.concatenate([popped[:, 1:], push], axis=-1)
    values = ops.concatenate([values[:, 1:], value[:, None, :]], axis=1)
    read_weights = _soft_ops.read_weights(strengths, cover)
    read = ops.sum(read_weights[:, :, None] * values, axis=1)
    return strengths, values, read_weights, read


class SoftList(ExternalSystem):
    """Base of the soft stack and queue; a subclass sets `cover`.

    Control `[push logit | pop logit | value (width)]`, output the read
    `(batch, width)`, states `[strengths (K), values (K·width)]` (zeros at
    the start, values flattened slot by slot), traces `push` and `pop`
    (batch, 1), `strengths` and `read_weights` (batch, K) after the step.
    """

    cover = None  # staticmethod: `_soft_ops.strength_above` or `_below`

    def __init__(self, *args, width=None, capacity=None, **kwargs):
        name = type(self).__name__
        _validation.keyword_only(name, args, f"{name}(width=8, capacity=32)")
        super().__init__(**kwargs)
        self.width = _validation.positive_int(
            "width", _validation.required("width", width))
        self.capacity = _validation.positive_int(
            "capacity", _validation.required("capacity", capacity))
        self.control_size = self.width + 2
        self.output_size = self.width
        self.state_size = [self.capacity, self.capacity * self.width]
        self.trace_sizes = {
            "push": 1,
            "pop": 1,
            "strengths": self.capacity,
            "read_weights": self.capacity,
        }
        self.check_control_layout()

    @property
    def control_layout(self):
        return [("push", 1), ("pop", 1), ("value", self.width)]

    @computes_in_float32
    def call(self, control, states, training=False, traces=False):
        push, pop, value = ops.split(control, [1, 2], axis=-1)
        push, pop = ops.sigmoid(push), ops.sigmoid(pop)
        strengths, values = states
        values = ops.reshape(values, (-1, self.capacity, self.width))
        strengths, values, read_weights, read = soft_list_step(
            push, pop, _soft_ops.tanh(value), strengths, values, self.cover
        )
        new_states = [
            strengths,
            ops.reshape(values, (-1, self.capacity * self.width)),
        ]
        if not traces:
            return read, new_states
        return read, new_states, {
            "push": push,
            "pop": pop,
            "strengths": strengths,
            "read_weights": read_weights,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "capacity": self.capacity,
        }
