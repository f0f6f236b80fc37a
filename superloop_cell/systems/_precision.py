"""Float32 maths inside a system under a mixed-precision policy.

Under `"mixed_float16"` or `"mixed_bfloat16"` a system receives its control
and states in the 16-bit compute dtype. Its maths would not survive there:
float16 flushes anything below 6e-8 to zero (epsilons, squared norms of a
fresh memory row, sharpened weights) and overflows above 65504 (softmax
and strength sums of large controls); bfloat16 keeps 8 bits of mantissa,
too few for strengths that are summed over many slots. So a built-in
system computes in float32 and casts what it returns back to the compute
dtype, as Keras computes its own softmax and normalisations.
"""

import functools

import keras
from keras import ops

_SIXTEEN_BITS = ("float16", "bfloat16")


def computes_in_float32(call):
    """Decorates a system's `call(control, states, training, traces)`.

    With a 16-bit compute dtype, the control and the floating states are
    cast to float32 before `call`, and its output, states and traces are
    cast back to the compute dtype after it. Otherwise `call` runs as is.
    """

    @functools.wraps(call)
    def wrapped(self, control, states, training=False, traces=False):
        dtype = self.compute_dtype
        if dtype not in _SIXTEEN_BITS:
            return call(self, control, states, training=training,
                        traces=traces)
        control = ops.cast(control, "float32")
        states = [ops.cast(s, "float32") for s in states]
        result = call(self, control, states, training=training,
                      traces=traces)
        return keras.tree.map_structure(lambda x: ops.cast(x, dtype), result)

    return wrapped
