"""A differentiable double-ended queue (Grefenstette et al. 2015) with a
fixed capacity."""

import keras
from keras import ops

from superloop_cell import _validation
from superloop_cell.systems import _soft_ops
from superloop_cell.systems._soft_ops import strength_above, strength_below
from superloop_cell.systems._precision import computes_in_float32
from superloop_cell.systems.base import ExternalSystem


def deque_step(push_top, pop_top, push_bottom, pop_bottom, value_top,
               value_bottom, strengths, values):
    """One step of the bounded deque: pop top, pop bottom, push, read.

    Args:
        push_top, pop_top, push_bottom, pop_bottom: `d^top_t`, `u^top_t`,
            `d^bot_t`, `u^bot_t`, each (batch, 1), in [0, 1].
        value_top, value_bottom: `v^top_t`, `v^bot_t`, (batch, width).
        strengths: `s_{t−1}`, (batch, 2K), bottom first.
        values: `V_{t−1}`, (batch, 2K, width), bottom first.

    Returns:
        `(strengths, values, top_weights, bottom_weights, read_top,
        read_bottom)`: `s_t` (batch, 2K), `V_t` (batch, 2K, width), the read
        weights (batch, 2K) and the reads (batch, width) at both ends.
    """
    capacity = strengths.shape[-1] // 2
    popped = _soft_ops.pop(strengths, pop_top, strength_above)
    popped = _soft_ops.pop(popped, pop_bottom, strength_below)
    # Each half is a shift register towards the middle: the two innermost
    # slots (the elements pushed `capacity` steps ago) are dropped after the
    # pops, and the new elements enter at the two ends.
    strengths = ops.concatenate(
        [push_bottom, popped[:, : capacity - 1], popped[:, capacity + 1 :],
         push_top],
        axis=-1,
    )
    values = ops.concatenate(
        [value_bottom[:, None, :], values[:, : capacity - 1],
         values[:, capacity + 1 :], value_top[:, None, :]],
        axis=1,
    )
    top_weights = _soft_ops.read_weights(strengths, strength_above)
    bottom_weights = _soft_ops.read_weights(strengths, strength_below)
    read_top = ops.sum(top_weights[:, :, None] * values, axis=1)
    read_bottom = ops.sum(bottom_weights[:, :, None] * values, axis=1)
    return (strengths, values, top_weights, bottom_weights, read_top,
            read_bottom)


@keras.saving.register_keras_serializable(package="superloop_cell")
class NeuralDeQue(ExternalSystem):
    """Continuous double-ended queue, after Grefenstette et al.

    "Learning to Transduce with Unbounded Memory" (2015), section 3.3
    (equations 6–11), with the unbounded memory replaced by `2·capacity`
    fixed slots.

    Control (`2·width + 4`): `[push top | pop top | push bottom |
    pop bottom | value top (width) | value bottom (width)]`, logits.

        d^top_t, u^top_t, d^bot_t, u^bot_t = sigmoid(·)   (batch, 1) each
        v^top_t, v^bot_t = tanh(·)                         (batch, width)

    With `s` the strengths (batch, 2K) and `V` the values (batch, 2K, width)
    of the elements, bottom first, one step pops from the top, then from the
    bottom (on what the top pop left), then pushes at both ends, then reads
    both ends:

        pop top:  s'[i] = max(0, s_{t−1}[i]
                                 − max(0, u^top_t − Σ_{j>i} s_{t−1}[j]))
        pop bot:  s"[i] = max(0, s'[i] − max(0, u^bot_t − Σ_{j<i} s'[j]))
        push:     s_t = [d^bot_t, s"[:K−1], s"[K+1:], d^top_t]
                  V_t = [v^bot_t, V_{t−1}[:K−1], V_{t−1}[K+1:], v^top_t]
        read:     w^top_t[i] = min(s_t[i], max(0, 1 − Σ_{j>i} s_t[j]))
                  w^bot_t[i] = min(s_t[i], max(0, 1 − Σ_{j<i} s_t[j]))
                  r^top_t = Σ_i w^top_t[i] V_t[i],  r^bot_t likewise

    The output is `[r^top_t | r^bot_t]` (batch, 2·width). At the start every
    slot is empty (strength 0, value 0); an empty slot is invisible to pops
    and reads.

    Capacity: the unbounded deque grows by one element at each end per step,
    so its oldest elements are in the middle, the bottom pushes below them
    (newest lowest) and the top pushes above them (newest highest). Here
    each half, `K = capacity` slots, is a shift register towards the middle:
    every step writes the two new elements into the end slots, even when
    `d_t ≈ 0`, and drops the two innermost ones, the elements pushed
    `capacity` steps before, after the pops. As in `NeuralStack` and
    `NeuralQueue`, the deque keeps the elements pushed in the last
    `capacity` steps: the elements pushed at step `t` can be read at steps
    `t … t + capacity − 1`, are still seen by the pops of step
    `t + capacity`, and are dropped after them, whatever strength they have
    left. With `capacity` at least the number of steps, nothing is dropped
    and the deque is exactly the unbounded one (the empty slots in the
    middle change nothing). Beyond that, it is the unbounded deque in which,
    after the pops of step `t`, the elements pushed at step `t − capacity`
    are removed: a pop or read that reaches past the middle then goes on
    to the other half's remaining elements sooner than it would in the
    unbounded deque. While every element is popped to strength 0 within
    that time, only empty slots are dropped and the deque is exactly the
    unbounded one.

    States: `[strengths (2K), values (2K·width)]`, zeros at the start; the
    values are `V` flattened slot by slot.

    Traces: `push_top`, `pop_top`, `push_bottom`, `pop_bottom` (batch, 1),
    and `strengths`, `top_weights`, `bottom_weights` (batch, 2K) after the
    step.

    Args:
        width: Positive integer, values per element.
        capacity: Positive integer `K`, how many steps back the deque
            remembers; it has `2·K` slots.
        control_bias: None (default) or a dict from control field to float, the
            field's starting value in the superloop's `control_bias`. Fields
            (`control_layout`): `"push_top"`, `"pop_top"`, `"push_bottom"`,
            `"pop_bottom"`, `"value_top"`, `"value_bottom"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        control: `(batch, 2·width + 4)`.
        states: `[strengths (batch, 2K), values (batch, 2K·width)]`.
        training: Unused.
        traces: Boolean, default False: whether to also return the traces.

    Output shape:
        `(output, new_states)`, `output = [r^top_t | r^bot_t]` of shape
        `(batch, 2·width)`; with `traces=True`,
        `(output, new_states, traces)`.

    Example:

    >>> cell = SuperloopCell([SGUCell(16)], [NeuralDeQue(width=8, capacity=32)])
    """

    def __init__(self, *args, width=None, capacity=None, **kwargs):
        _validation.keyword_only(
            "NeuralDeQue", args, "NeuralDeQue(width=8, capacity=32)")
        super().__init__(**kwargs)
        self.width = _validation.positive_int(
            "width", _validation.required("width", width))
        self.capacity = _validation.positive_int(
            "capacity", _validation.required("capacity", capacity))
        self.control_size = 2 * self.width + 4
        self.output_size = 2 * self.width
        slots = 2 * self.capacity
        self.state_size = [slots, slots * self.width]
        self.trace_sizes = {
            "push_top": 1,
            "pop_top": 1,
            "push_bottom": 1,
            "pop_bottom": 1,
            "strengths": slots,
            "top_weights": slots,
            "bottom_weights": slots,
        }
        self.check_control_layout()

    @property
    def control_layout(self):
        return [("push_top", 1), ("pop_top", 1), ("push_bottom", 1),
                ("pop_bottom", 1), ("value_top", self.width),
                ("value_bottom", self.width)]

    @computes_in_float32
    def call(self, control, states, training=False, traces=False):
        gates, value_top, value_bottom = ops.split(
            control, [4, 4 + self.width], axis=-1
        )
        gates = ops.sigmoid(gates)
        push_top, pop_top, push_bottom, pop_bottom = ops.split(
            gates, 4, axis=-1
        )
        strengths, values = states
        slots = 2 * self.capacity
        values = ops.reshape(values, (-1, slots, self.width))
        (strengths, values, top_weights, bottom_weights, read_top,
         read_bottom) = deque_step(
            push_top, pop_top, push_bottom, pop_bottom, _soft_ops.tanh(value_top),
            _soft_ops.tanh(value_bottom), strengths, values,
        )
        output = ops.concatenate([read_top, read_bottom], axis=-1)
        new_states = [strengths, ops.reshape(values, (-1, slots * self.width))]
        if not traces:
            return output, new_states
        return output, new_states, {
            "push_top": push_top,
            "pop_top": pop_top,
            "push_bottom": push_bottom,
            "pop_bottom": pop_bottom,
            "strengths": strengths,
            "top_weights": top_weights,
            "bottom_weights": bottom_weights,
        }

    def get_config(self):
        return {
            **super().get_config(),
            "width": self.width,
            "capacity": self.capacity,
        }
