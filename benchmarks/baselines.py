"""The comparison cell of the benchmarks: the same function, written plainly.

`StraightforwardSuperloopCell` computes the same function as

    SuperloopCell([SGUCell(units) for _ in range(depth)],
                  [RegisterMemory(registers=memory_depth, width=memory_width)])

written the way one would write it first, with `keras.ops` and one weight
set per layer: for each SGU layer, with `x` its input and `h` its state,

    gate = concat([x, h]) · gate_kernel + gate_bias        (batch, units)
    cand = x · candidate_kernel + candidate_bias           (batch, units)
    f    = (softsign(gate) + 1) / 2
    h'   = (1 − f) · leaky_relu(cand, 0.1) + f · h

then the control projection, the 4×8 register memory and its read fed back
by concatenation to the next step's input. `gate_kernel` is the SGU's
`[kernel[:, :units]; recurrent_kernel]` stacked, so the two are equal for
matching weights (`check_against_project_cell` verifies it).
"""

import keras
import numpy as np
from keras import ops

CANDIDATE_NEGATIVE_SLOPE = 0.1  # as in superloop_cell.cells.sgu


class StraightforwardSuperloopCell(keras.layers.Layer):
    """SGU stack + register memory as one plain Keras cell, written naively.

    Args:
        depth: Number of SGU layers.
        units: Width of each SGU layer.
        memory_depth: Registers in the memory. Default 4.
        memory_width: Values per register. Default 8.
        **kwargs: Base `keras.layers.Layer` arguments.

    State layout (each `(batch, size)`):
        `[feedback (memory_width), h_1 … h_depth (units each),
        memory (memory_depth·memory_width)]`, the same order as
        `SuperloopCell` with `fused=False`.

    Output shape:
        `(y, new_states)`, `y` of shape `(batch, units)`.
    """

    def __init__(self, depth, units, memory_depth=4, memory_width=8, **kwargs):
        super().__init__(**kwargs)
        self.depth = depth
        self.units = units
        self.memory_depth = memory_depth
        self.memory_width = memory_width
        self.control_size = 2 * memory_depth + memory_width
        self.state_size = (
            [memory_width] + [units] * depth + [memory_depth * memory_width]
        )
        self.output_size = units

    def build(self, input_shape):
        width = input_shape[-1] + self.memory_width
        u = self.units
        self.gate_kernels, self.gate_biases = [], []
        self.candidate_kernels, self.candidate_biases = [], []
        for layer in range(self.depth):
            self.gate_kernels.append(
                self.add_weight((width + u, u), name=f"gate_kernel_{layer}")
            )
            self.gate_biases.append(
                self.add_weight((u,), "zeros", name=f"gate_bias_{layer}")
            )
            self.candidate_kernels.append(
                self.add_weight((width, u), name=f"candidate_kernel_{layer}")
            )
            self.candidate_biases.append(
                self.add_weight((u,), "zeros", name=f"candidate_bias_{layer}")
            )
            width = u
        self.control_kernel = self.add_weight(
            shape=(u, self.control_size), name="control_kernel"
        )
        self.control_bias = self.add_weight(
            shape=(self.control_size,), initializer="zeros", name="control_bias"
        )

    def call(self, inputs, states, training=False):
        feedback, hs, memory = states[0], states[1:-1], states[-1]
        x = ops.concatenate([inputs, feedback], axis=-1)
        new_hs = []
        for layer, h in enumerate(hs):
            xh = ops.concatenate([x, h], axis=-1)
            gate = ops.matmul(xh, self.gate_kernels[layer])
            gate = gate + self.gate_biases[layer]
            cand = (
                ops.matmul(x, self.candidate_kernels[layer])
                + self.candidate_biases[layer]
            )
            f = (ops.softsign(gate) + 1.0) / 2.0
            c = ops.leaky_relu(cand, negative_slope=CANDIDATE_NEGATIVE_SLOPE)
            x = (1.0 - f) * c + f * h
            new_hs.append(x)
        y = x

        d, w = self.memory_depth, self.memory_width
        controls = ops.matmul(y, self.control_kernel) + self.control_bias
        store = ops.softmax(controls[:, :d], axis=-1)[:, :, None]
        recall = ops.softmax(controls[:, d : 2 * d], axis=-1)[:, :, None]
        data = controls[:, 2 * d :][:, None, :]
        memory = ops.reshape(memory, (-1, d, w))
        memory = (1.0 - store) * memory + store * data
        read = ops.sum(recall * memory, axis=1)
        return y, [read] + new_hs + [ops.reshape(memory, (-1, d * w))]


def check_against_project_cell(depth=3, units=16, steps=5, batch=2, seed=0):
    """Max |difference| between the baseline and `SuperloopCell` outputs.

    Builds `SuperloopCell(..., fused=False)`, copies its per-cell SGU weights
    into a `StraightforwardSuperloopCell` and runs both over the same random
    sequence. Returns the largest absolute difference of the outputs.
    """
    from superloop_cell import RegisterMemory, SGUCell, SuperloopCell

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, steps, 2)).astype("float32")
    project = SuperloopCell(
        cells=[SGUCell(units) for _ in range(depth)],
        systems=[RegisterMemory(registers=4, width=8)],
        fused=False,
    )
    baseline = StraightforwardSuperloopCell(depth, units)
    y_project = keras.layers.RNN(project, return_sequences=True)(x)
    keras.layers.RNN(baseline, return_sequences=True)(x)  # builds it
    u = units
    for layer, sgu in enumerate(project.cells):
        kernel = ops.convert_to_numpy(sgu.kernel)
        bias = ops.convert_to_numpy(sgu.bias)
        recurrent = ops.convert_to_numpy(sgu.recurrent_kernel)
        baseline.gate_kernels[layer].assign(
            np.concatenate([kernel[:, :u], recurrent], axis=0)
        )
        baseline.gate_biases[layer].assign(bias[:u])
        baseline.candidate_kernels[layer].assign(kernel[:, u:])
        baseline.candidate_biases[layer].assign(bias[u:])
    baseline.control_kernel.assign(ops.convert_to_numpy(project.control_kernel))
    baseline.control_bias.assign(ops.convert_to_numpy(project.control_bias))
    y_baseline = keras.layers.RNN(baseline, return_sequences=True)(x)
    difference = ops.convert_to_numpy(y_project) - ops.convert_to_numpy(
        y_baseline
    )
    return float(np.max(np.abs(difference)))
