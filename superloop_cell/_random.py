"""Random numbers inside the RNN loop, carried as state.

A random draw inside a step cannot use a `keras.random.SeedGenerator`: on
JAX the loop is a `lax.scan`, where a generator's state update would leak
out of the trace. Instead a system that samples carries a *key* among its
states. The key is drawn once per sequence, outside the loop, from a
`SeedGenerator` (so every batch of `fit` gets fresh keys and a fixed seed
repeats a run); each step turns it into uniform numbers with a counter-based
hash and advances it, in `keras.ops` integer arithmetic that is exact on
every backend.

The key is a 31-bit counter held as `KEY_SIZE` floats, one byte each: bytes
are exact in every float dtype a state may be cast to (bfloat16 included).
Each step advances it by an odd constant (period 2³¹) and draws
`fmix32(key ^ salt_k)` for draw `k`, `fmix32` being MurmurHash3's 32-bit
finaliser, a bijection that mixes every input bit into every output bit.
Not for cryptography.
"""

import keras
from keras import ops

KEY_SIZE = 4
_BYTE = 256
_COUNTER_STEP = 0x2545F491  # odd: the counter visits all 2³¹ values
_SALT = 0x61C88647  # draw k of a step hashes key ^ (k + 1)·_SALT
_UNIFORM_BITS = 24  # float32 holds 24-bit integers exactly


def _int32(value):
    """An unsigned 32-bit constant as the int32 with the same bits."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _shift_right(x, bits):
    """Logical right shift of int32 bits (`right_shift` is arithmetic)."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _fmix32(h):
    h = ops.bitwise_xor(h, _shift_right(h, 16))
    h = h * _int32(0x85EBCA6B)
    h = ops.bitwise_xor(h, _shift_right(h, 13))
    h = h * _int32(0xC2B2AE35)
    return ops.bitwise_xor(h, _shift_right(h, 16))


def draw_keys(batch_size, seed_generator, dtype):
    """`(batch, KEY_SIZE)` fresh keys, one per sequence, as byte floats."""
    low = keras.random.randint(
        (batch_size, KEY_SIZE - 1), 0, _BYTE, seed=seed_generator
    )
    high = keras.random.randint((batch_size, 1), 0, _BYTE // 2,
                                seed=seed_generator)
    return ops.cast(ops.concatenate([low, high], axis=-1), dtype)


def _to_int(key):
    digits = ops.cast(ops.round(key), "int32")
    value = digits[:, 0]
    for i in range(1, KEY_SIZE):
        value = ops.bitwise_or(value, ops.left_shift(digits[:, i], 8 * i))
    return value


def _to_bytes(value, dtype):
    digits = [
        ops.bitwise_and(_shift_right(value, 8 * i) if i else value, _BYTE - 1)
        for i in range(KEY_SIZE)
    ]
    return ops.cast(ops.stack(digits, axis=-1), dtype)


def uniform(key, count):
    """`count` uniform draws per sequence, and the advanced key.

    Args:
        key: `(batch, KEY_SIZE)` byte floats.
        count: Python int.

    Returns:
        `(u, next_key)`: `u` is `(batch, count)` float32 in (0, 1), each
        value a multiple of 2⁻²⁴ offset by half of one.
    """
    value = _to_int(key)
    draws = []
    for k in range(count):
        bits = _fmix32(ops.bitwise_xor(value, _int32((k + 1) * _SALT)))
        top = _shift_right(bits, 32 - _UNIFORM_BITS)
        draws.append((ops.cast(top, "float32") + 0.5) / float(1 << _UNIFORM_BITS))
    next_value = ops.bitwise_and(value + _COUNTER_STEP, 0x7FFFFFFF)
    return ops.stack(draws, axis=-1), _to_bytes(next_value, key.dtype)
