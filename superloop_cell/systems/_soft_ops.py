"""Small `keras.ops` building blocks shared by the systems.

The memories of Grefenstette et al. (stack, queue, deque) cover each slot
by the strength of the elements in front of it; the addressing systems
normalise logits with a softmax. Each is written once here.
"""

import keras
from keras import ops


def softmax(logits):
    """Softmax over the last axis.

    Written out: TensorFlow's oneDNN softmax kernel has a large fixed cost
    per call on tensors this small, inside the loop.
    """
    e = ops.exp(logits - ops.max(logits, axis=-1, keepdims=True))
    return e / ops.sum(e, axis=-1, keepdims=True)


def tanh(x):
    """`tanh(x)` in `x`'s own precision.

    Keras' `ops.tanh` computes a float64 tensor in float32 on the JAX
    backend (Keras 3.15); for float64 this uses `2·sigmoid(2x) − 1`, which
    stays in float64, within a few float64 epsilons of `tanh` (absolute).
    """
    if keras.backend.standardize_dtype(x.dtype) == "float64":
        return 2.0 * ops.sigmoid(2.0 * x) - 1.0
    return ops.tanh(x)


def strength_above(strengths):
    """`Σ_{j>i} s[j]` for every slot `i`: (batch, K) → (batch, K).

    An exclusive suffix sum, done as a reversed cumulative sum shifted by one
    slot rather than `cumsum − s`, so that no cancellation error creeps in.
    """
    reversed_cumsum = ops.cumsum(ops.flip(strengths, axis=-1), axis=-1)
    suffix = ops.flip(reversed_cumsum, axis=-1)
    return ops.concatenate(
        [suffix[:, 1:], ops.zeros_like(strengths[:, :1])], axis=-1
    )


def strength_below(strengths):
    """`Σ_{j<i} s[j]` for every slot `i`: (batch, K) → (batch, K).

    An exclusive prefix sum: the cumulative sum shifted by one slot.
    """
    cumsum = ops.cumsum(strengths, axis=-1)
    return ops.concatenate(
        [ops.zeros_like(strengths[:, :1]), cumsum[:, :-1]], axis=-1
    )


def pop(strengths, amount, cover):
    """Removes `amount` of strength from the end that `cover` measures from.

    `s'[i] = max(0, s[i] − max(0, u − cover(s)[i]))`, with `cover` one of
    `strength_above` (pop from the top/back) or `strength_below` (from the
    bottom/front). `amount`: (batch, 1).
    """
    return ops.relu(strengths - ops.relu(amount - cover(strengths)))


def read_weights(strengths, cover):
    """`w[i] = min(s[i], max(0, 1 − cover(s)[i]))`: the read at that end."""
    return ops.minimum(strengths, ops.relu(1.0 - cover(strengths)))
