"""A content- and location-addressed memory: the Neural Turing Machine's."""

from typing import NamedTuple

import keras
from keras import ops

from superloop_cell import _validation
from superloop_cell.systems import _soft_ops
from superloop_cell.systems._soft_ops import softmax
from superloop_cell.systems._precision import computes_in_float32
from superloop_cell.systems.base import ExternalSystem

# The value every memory cell starts from: small, but not zero, so that an
# unwritten row has a direction for the keys to be compared with.
MEMORY_INIT = 1e-6
# Added to ‖key‖·‖M_i‖ in the cosine similarity K.
_SIMILARITY_EPSILON = 1e-8
# Squared norms are floored here before the square root: √ has an infinite
# slope at 0, and a zero key (a zero control) would give a NaN gradient.
# Far below anything that matters next to _SIMILARITY_EPSILON.
_SQUARED_NORM_FLOOR = 1e-24
# Added to the sharpened weights' sum (never below 1, see `_sharpen`).
_SHARPEN_EPSILON = 1e-8
# `_sharpen` divides by the largest weight only above this: weights that
# are all (nearly) zero, which only previous weights that do not sum to 1
# can give, are raised to γ as they are, and 1 / peak cannot overflow.
_PEAK_FLOOR = 1e-30
# Widths of a head's scalars: β, g, γ, and the shift weights over the moves
# (−1, 0, +1).
_SHIFTS = 3
_HEAD_SCALARS = 3 + _SHIFTS


class MemoryState(NamedTuple):
    """The memory's state, as named tensors.

    memory: `M`, (batch, slots, width).
    write_weights: `w^write`, (batch, slots).
    read_weights: one `w^read` per read head, (batch, read_heads, slots).
    """

    memory: object
    write_weights: object
    read_weights: object


class Head(NamedTuple):
    """The addressing parameters of `heads` heads, after their activations.

    key: (batch, heads, width). strength `β` ≥ 0, gate `g` in [0, 1] and
    sharpness `γ` ≥ 1: (batch, heads, 1). shift: (batch, heads, 3), weights
    of the moves (−1, 0, +1), summing to 1.
    """

    key: object
    strength: object
    gate: object
    shift: object
    sharpness: object


def _head(raw):
    """`Head` from the raw control `[key | β | g | shift (3) | γ]` of shape
    (batch, heads, width + 6)."""
    width = raw.shape[-1] - _HEAD_SCALARS
    key, strength, gate, shift, sharpness = ops.split(
        raw, [width, width + 1, width + 2, width + 2 + _SHIFTS], axis=-1
    )
    return Head(
        key=key,
        strength=ops.softplus(strength),
        gate=ops.sigmoid(gate),
        shift=softmax(shift),
        sharpness=1.0 + ops.softplus(sharpness),
    )


def _norm(x):
    """‖x‖ over the last axis, keeping it; finite gradient at x = 0."""
    squared = ops.sum(x * x, axis=-1, keepdims=True)
    return ops.sqrt(ops.maximum(squared, _SQUARED_NORM_FLOOR))


def _similarity(keys, memory):
    """`K(key, M_i) = key·M_i / (‖key‖·‖M_i‖ + ε)`.

    (batch, heads, width), (batch, slots, width) → (batch, heads, slots).
    """
    dots = ops.matmul(keys, ops.transpose(memory, (0, 2, 1)))
    norms = _norm(keys) * ops.transpose(_norm(memory), (0, 2, 1))
    return dots / (norms + _SIMILARITY_EPSILON)


def _sharpen(weights, sharpness):
    """`w̃^γ / Σ w̃^γ` (Graves eq. 9) over the last axis, computed so that
    it neither underflows nor has a NaN gradient.

    Written literally, `w̃^γ` underflows for large γ (0.5^200 is 0 in
    float32) and the weights all become 0. Dividing `w̃` by its largest
    entry first leaves the quotient unchanged and puts that entry's power at
    exactly 1, so the sum is at least 1. Exact zeros of `w̃` (an underflowed
    softmax, a one-hot shift) stay 0 through `where`, away from `log(0)`.
    """
    peak = ops.max(weights, axis=-1, keepdims=True)
    peak = ops.where(peak > _PEAK_FLOOR, peak, ops.ones_like(peak))
    ratio = weights / peak
    positive = ratio > 0
    safe = ops.where(positive, ratio, ops.ones_like(ratio))
    powered = ops.where(
        positive, ops.exp(sharpness * ops.log(safe)), ops.zeros_like(ratio)
    )
    return powered / (ops.sum(powered, axis=-1, keepdims=True)
                      + _SHARPEN_EPSILON)


def address(head, memory, previous):
    """NTM addressing (Graves 2014, §3.3): content, gate, shift, sharpen.

    Args:
        head: `Head` of `heads` heads.
        memory: `M`, (batch, slots, width).
        previous: `w_{t−1}`, (batch, heads, slots).

    Returns:
        `w_t`, (batch, heads, slots).
    """
    content = softmax(head.strength * _similarity(head.key, memory))
    gated = head.gate * content + (1.0 - head.gate) * previous
    # w̃[i] = Σ_j w^g[j]·shift[(i − j) mod slots]: a move by +1 carries
    # the weight of slot i − 1 to slot i.
    shifted = (
        head.shift[..., 0:1] * ops.roll(gated, -1, axis=-1)
        + head.shift[..., 1:2] * gated
        + head.shift[..., 2:3] * ops.roll(gated, 1, axis=-1)
    )
    return _sharpen(shifted, head.sharpness)


@keras.saving.register_keras_serializable(package="superloop_cell")
class ContentMemory(ExternalSystem):
    """Memory matrix with Neural Turing Machine heads: one write, `R` read.

    After Graves et al., "Neural Turing Machines" (2014), section 3. Each
    step the write head addresses the memory and writes; every read head
    addresses and reads the memory as written this step (the default, as
    the DNC), or with `read_before_write=True` as it was before this step's
    write (a read then never finds what the same step wrote: a key that
    the step also writes matches only older rows).

    Control (`3·width + 6 + read_heads·(width + 6)`): the write head
    `[key (width) | β | g | shift (3) | γ | erase (width) | add (width)]`,
    then per read head `[key (width) | β | g | shift (3) | γ]`, with

        β = softplus(·)       g = sigmoid(·)
        shift = softmax(·), over the moves (−1, 0, +1)
        γ = 1 + softplus(·)   erase = sigmoid(·)   add = tanh(·)

    Addressing of a head with previous weights `w_{t−1}` (batch, slots) on
    a memory `M` (batch, slots, width):

        K(u, v) = u·v / (‖u‖·‖v‖ + 1e-8)
        w^c  = softmax(β · K(key, M_i))                    (batch, slots)
        w^g  = g · w^c + (1 − g) · w_{t−1}
        w̃[i] = Σ_j w^g[j] · shift[(i − j) mod slots]
        w    = w̃^γ / Σ_j w̃[j]^γ

    (the last computed on `w̃ / max w̃`, which cannot underflow, with 1e-8
    added to its sum). Write, with the write head's weights `w^write`
    addressed on `M_{t−1}`:

        M_t = M_{t−1} ∘ (1 − w^write eraseᵀ) + w^write addᵀ

    Read, with each read head's weights `w^read` addressed on `M_t`
    (`M_{t−1}` with `read_before_write`):

        r = Σ_i w^read[i] · M_t[i]                         (batch, width)

    The output is the read vectors concatenated, `(batch, R·width)`.

    States: `[memory (slots·width), write weights (slots), read weights
    (slots) per read head]`, `M` flattened slot by slot. The initial state
    (`get_initial_state`) fills the memory with 1e-6, so that the first
    keys have something to compare with, and puts every head's weights on
    slot 0.

    Traces: `write_weights` and `read_weights_0`, `read_weights_1`, …
    (batch, slots) after the step.

    Args:
        slots: Positive integer, number of memory rows.
        width: Positive integer, values per row.
        read_heads: Positive integer `R`, number of read heads. Default 1.
        read_before_write: Boolean, default False: whether the read heads
            address and read the memory before this step's write.
        control_bias: None (default) or a dict from control field to float, the
            field's starting value in the superloop's `control_bias`. Fields
            (`control_layout`): `"write_key"`, `"write_strength"`,
            `"write_gate"`, `"write_shift"`, `"write_sharpening"`, `"erase"`,
            `"add"`, then per read head `h` `"read{h}_key"` …
            `"read{h}_sharpening"`.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        control: `(batch, control_size)`, laid out as above.
        states: `[memory (batch, slots·width), write weights (batch,
            slots), read weights (batch, slots) × R]`.
        training: Unused.
        traces: Boolean, default False: whether to also return the traces.

    Output shape:
        `(reads, new_states)`, `reads` of shape `(batch, R·width)`; with
        `traces=True`, `(reads, new_states, traces)`.

    Example:

    >>> memory = ContentMemory(slots=16, width=8, read_heads=2)
    >>> cell = SuperloopCell([SGUCell(32)], [memory])
    """

    def __init__(self, *args, slots=None, width=None, read_heads=1,
                 read_before_write=False, **kwargs):
        _validation.keyword_only(
            "ContentMemory", args,
            "ContentMemory(slots=128, width=20, read_heads=1)")
        super().__init__(**kwargs)
        self.slots = _validation.positive_int(
            "slots", _validation.required("slots", slots))
        self.width = _validation.positive_int(
            "width", _validation.required("width", width))
        self.read_heads = _validation.positive_int("read_heads", read_heads)
        self.read_before_write = _validation.boolean("read_before_write",
                                                     read_before_write)
        self._write_size = 3 * self.width + _HEAD_SCALARS
        self._read_size = self.width + _HEAD_SCALARS
        self.control_size = (
            self._write_size + self.read_heads * self._read_size
        )
        self.output_size = self.read_heads * self.width
        self.state_size = (
            [self.slots * self.width, self.slots]
            + [self.slots] * self.read_heads
        )
        self.trace_sizes = {"write_weights": self.slots}
        for h in range(self.read_heads):
            self.trace_sizes[f"read_weights_{h}"] = self.slots
        self.trace_labels = {name: "slot" for name in self.trace_sizes}
        self.check_control_layout()

    @property
    def control_layout(self):
        """The write head's fields (`write_key` … `write_sharpening`,
        `erase`, `add`), then each read head's (`read0_key` …)."""
        def head(prefix):
            return [(f"{prefix}_key", self.width), (f"{prefix}_strength", 1),
                    (f"{prefix}_gate", 1), (f"{prefix}_shift", _SHIFTS),
                    (f"{prefix}_sharpening", 1)]

        layout = head("write") + [("erase", self.width), ("add", self.width)]
        for h in range(self.read_heads):
            layout += head(f"read{h}")
        return layout

    def get_initial_state(self, batch_size=None):
        """Memory filled with `MEMORY_INIT`, every head's weights one-hot
        on slot 0, in the compute dtype."""
        dtype = self.compute_dtype
        memory = ops.full(
            (batch_size, self.slots * self.width), MEMORY_INIT, dtype=dtype
        )
        on_first = ops.one_hot(
            ops.zeros((batch_size,), dtype="int32"), self.slots, dtype=dtype
        )
        return [memory] + [on_first] * (1 + self.read_heads)

    def _unflatten(self, states):
        return MemoryState(
            memory=ops.reshape(states[0], (-1, self.slots, self.width)),
            write_weights=states[1],
            read_weights=ops.stack(states[2:], axis=1),
        )

    def _flatten(self, state):
        return (
            [ops.reshape(state.memory, (-1, self.slots * self.width)),
             state.write_weights]
            + list(ops.unstack(state.read_weights, self.read_heads, axis=1))
        )

    @computes_in_float32
    def call(self, control, states, training=False, traces=False):
        state = self._unflatten(states)
        write, read = ops.split(control, [self._write_size], axis=-1)
        addressing, erase, add = ops.split(
            write[:, None, :],
            [self._read_size, self._read_size + self.width],
            axis=-1,
        )
        write_head = _head(addressing)
        write_weights = address(
            write_head, state.memory, state.write_weights[:, None, :]
        )[:, 0]
        # (batch, 1, width) each.
        erase, add = ops.sigmoid(erase), _soft_ops.tanh(add)
        weights = write_weights[:, :, None]
        memory = state.memory * (1.0 - weights * erase) + weights * add

        read_head = _head(
            ops.reshape(read, (-1, self.read_heads, self._read_size))
        )
        read_from = state.memory if self.read_before_write else memory
        read_weights = address(read_head, read_from, state.read_weights)
        reads = ops.matmul(read_weights, read_from)  # (batch, R, width)
        output = ops.reshape(reads, (-1, self.read_heads * self.width))

        new_states = self._flatten(
            MemoryState(memory, write_weights, read_weights)
        )
        if not traces:
            return output, new_states
        step_traces = {"write_weights": write_weights}
        for h in range(self.read_heads):
            step_traces[f"read_weights_{h}"] = read_weights[:, h]
        return output, new_states, step_traces

    def get_config(self):
        return {
            **super().get_config(),
            "slots": self.slots,
            "width": self.width,
            "read_heads": self.read_heads,
            "read_before_write": self.read_before_write,
        }
