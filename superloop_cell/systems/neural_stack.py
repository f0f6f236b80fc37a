"""A differentiable stack (Grefenstette et al. 2015) with a fixed capacity."""

import keras

from superloop_cell.systems import _soft_ops
from superloop_cell.systems._soft_list import SoftList


@keras.saving.register_keras_serializable(package="superloop_cell")
class NeuralStack(SoftList):
    """Continuous stack with soft push and pop, after Grefenstette et al.

    "Learning to Transduce with Unbounded Memory" (2015), section 3.1, with
    the unbounded memory replaced by `capacity` fixed slots.

    Control (`width + 2`): `[push logit | pop logit | value (width)]`.

        d_t = sigmoid(push logit)                          (batch, 1)
        u_t = sigmoid(pop logit)                           (batch, 1)
        v_t = tanh(value)                                  (batch, width)

    With `s` the strengths (batch, K) and `V` the values (batch, K, width)
    of the elements on the stack, oldest first, one step pops, then pushes,
    then reads:

        pop:   s'[i] = max(0, s_{t−1}[i] − max(0, u_t − Σ_{j>i} s_{t−1}[j]))
        push:  s_t = [s'[1:], d_t]        V_t = [V_{t−1}[1:], v_t]
        read:  w_t[i] = min(s_t[i], max(0, 1 − Σ_{j>i} s_t[j]))
               r_t    = Σ_i w_t[i] · V_t[i]                (batch, width)

    `r_t` is the system's output. At the start every slot is empty
    (strength 0, value 0); an empty slot is invisible to pops and reads.

    Capacity: the slots are a shift register. Every step shifts the stack
    down by one slot and writes the new element into the last slot, even
    when `d_t ≈ 0`, so the element in the first slot is dropped at every
    step. `capacity` therefore bounds how many *steps* back the stack
    remembers: the element pushed at step `t` is gone after step
    `t + capacity − 1`, whatever its strength. Because nothing in the
    equations looks below an element, dropping the bottom element leaves
    everything above it unchanged: the kept strengths, and all pops, are
    exactly those of the unbounded stack, and the read differs from it only
    by the dropped elements' share `w[i]·V[i]`.

    States: `[strengths (K), values (K·width)]`, zeros at the start; the
    values are `V` flattened slot by slot.

    Traces: `push` and `pop` (batch, 1), and `strengths` and
    `read_weights` (batch, K) after the step.

    Args:
        width: Positive integer, values per element.
        capacity: Positive integer `K`, number of slots: how many steps
            back the stack remembers.
        control_bias: None (default) or a dict from control field to float, the
            field's starting value in the superloop's `control_bias`. Fields
            (`control_layout`): `"push"`, `"pop"`, `"value"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        control: `(batch, width + 2)`.
        states: `[strengths (batch, K), values (batch, K·width)]`.
        training: Unused.
        traces: Whether to return the traces too.

    Output shape:
        `(r_t, new_states)`, `r_t` of shape `(batch, width)`.

    Example:

    >>> cell = SuperloopCell([SGUCell(16)], [NeuralStack(width=8, capacity=32)])
    """

    cover = staticmethod(_soft_ops.strength_above)
