"""A differentiable queue (Grefenstette et al. 2015) with a fixed capacity."""

import keras

from superloop_cell.systems import _soft_ops
from superloop_cell.systems._soft_list import SoftList


@keras.saving.register_keras_serializable(package="superloop_cell")
class NeuralQueue(SoftList):
    """Continuous queue with soft push and pop, after Grefenstette et al.

    "Learning to Transduce with Unbounded Memory" (2015), section 3.2
    (equations 4–5), with the unbounded memory replaced by `capacity` fixed
    slots.

    Control (`width + 2`): `[push logit | pop logit | value (width)]`.

        d_t = sigmoid(push logit)                          (batch, 1)
        u_t = sigmoid(pop logit)                           (batch, 1)
        v_t = tanh(value)                                  (batch, width)

    With `s` the strengths (batch, K) and `V` the values (batch, K, width)
    of the elements in the queue, front (oldest) first, one step pops from
    the front, then pushes at the back, then reads from the front:

        pop:   s'[i] = max(0, s_{t−1}[i]
                              − max(0, u_t − Σ_{j<i} s_{t−1}[j]))
        push:  s_t = [s'[1:], d_t]        V_t = [V_{t−1}[1:], v_t]
        read:  w_t[i] = min(s_t[i], max(0, 1 − Σ_{j<i} s_t[j]))
               r_t    = Σ_i w_t[i] · V_t[i]                (batch, width)

    `r_t` is the system's output. At the start every slot is empty
    (strength 0, value 0); an empty slot is invisible to pops and reads.

    Capacity: the slots are a shift register, as in `NeuralStack`. Every
    step writes the new element into the last slot, even when `d_t ≈ 0`,
    and drops the element in the first slot after the pop: the queue keeps
    the elements pushed in the last `capacity` steps. The element pushed at
    step `t` can be read at steps `t … t + capacity − 1`, is still seen by
    the pop of step `t + capacity` (the pop acts on what the previous read
    saw, so a "read, then pop" consumes it rather than the next element),
    and is dropped after that pop, whatever strength it has left.

    With `capacity` at least the number of steps, nothing is dropped and the
    queue is exactly the unbounded one. Beyond that it differs from it: in
    a queue the oldest element is the front, so unlike the stack's, the
    dropped element is the one in front of all the others. The bounded
    queue is the unbounded one in which, after the pop of step `t`, the
    element pushed at step `t − capacity` is removed: the elements behind
    it move forward, so later pops and reads reach them sooner than in the
    unbounded queue. While every element is popped to strength 0 by the
    pop of step `t + capacity` at the latest, only empty slots are dropped
    and the queue is exactly the unbounded one.

    States: `[strengths (K), values (K·width)]`, zeros at the start; the
    values are `V` flattened slot by slot.

    Traces: `push` and `pop` (batch, 1), and `strengths` and `read_weights`
    (batch, K) after the step.

    Args:
        width: Positive integer, values per element.
        capacity: Positive integer `K`, number of slots: how many steps
            back the queue remembers.
        control_bias: None (default) or a dict from control field to float, the
            field's starting value in the superloop's `control_bias`. Fields
            (`control_layout`): `"push"`, `"pop"`, `"value"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        control: `(batch, width + 2)`.
        states: `[strengths (batch, K), values (batch, K·width)]`.
        training: Unused.
        traces: Boolean, default False: whether to also return the traces.

    Output shape:
        `(r_t, new_states)`, `r_t` of shape `(batch, width)`; with
        `traces=True`, `(r_t, new_states, traces)`.

    Example:

    >>> cell = SuperloopCell([SGUCell(16)], [NeuralQueue(width=8, capacity=32)])
    """

    cover = staticmethod(_soft_ops.strength_below)
