"""The stages of a superloop's recurrent stack, and the fused SGU run.

`SuperloopCell` runs its `cells` as a sequence of *stages*. A stage is either
one Keras RNN cell (`CellStage`, any cell at all), or — the fast path — a run
of consecutive same-width `SGUCell`s computed as one stacked layer
(`SGURunStage`, weights in one `SGUStack`).

Why a run is fused: written cell by cell, a 32-layer stack puts 96 weight
variables and, once differentiated, about a dozen saved intermediates per
layer per step into the RNN's loop; building that gradient graph dominates
the first training step and saving/restoring the intermediates dominates
the steady one. The fused run reads three stacked weights once per step and
differentiates the whole run with the hand-written backward pass of
`cells/sgu_run.py`, which saves three stacked tensors per step.
"""

import keras
from keras import ops

from superloop_cell import _validation
from superloop_cell.cells.sgu_run import sgu_run
from superloop_cell.cells.sgu import SGUCell, sgu_forget_gate, sgu_update

MIN_FUSED_RUN = 2
# With `fused="auto"` (the default) only runs of this many layers or more are
# fused. Measured by `benchmarks/fused_threshold.py` (2-core CPU, TensorFlow
# 2.21, 16 units, batch 256, T 64; benchmarks/RESULTS.md): the fused run's
# batched ops have a fixed cost per step, so below 16 layers its steady step
# is 1.15–1.5× the plain cells' and the steady step decides a training run;
# from 16 layers on the two are within this machine's noise of each other
# (0.98–1.28×; 1.07 and 1.28 in two runs at 16) and the fused run's first
# step is 2.5–4× shorter.
AUTO_FUSED_RUN = 15
AUTO_FUSED = "auto"  # the `fused` value that applies AUTO_FUSED_RUN


class _StackedInitializer(keras.initializers.Initializer):
    """Stacks one initializer call per layer along a new leading axis."""

    def __init__(self, initializers):
        self.initializers = initializers

    def __call__(self, shape, dtype=None):
        return ops.stack(
            [init(shape[1:], dtype=dtype) for init in self.initializers], axis=0
        )


def _state_structure(cell):
    """The cell's `state_size` as a list (Keras accepts a bare int)."""
    size = cell.state_size
    return list(size) if isinstance(size, (list, tuple)) else [size]


class CellStage:
    """One Keras RNN cell as a stage: its states are flattened at the edge.

    `indices`: the position of the cell in the superloop's `cells`.
    """

    def __init__(self, cell, index):
        self.cell = cell
        self.indices = [index]
        self.structure = _state_structure(cell)
        self.state_sizes = _validation.flat_state_sizes("cell", self.structure)
        self.output_size = stages_output_size(cell)

    def build(self, input_dim):
        if not self.cell.built:
            self.cell.build((None, input_dim))
            self.cell.built = True

    def __call__(self, x, states, training=False):
        nested = keras.tree.pack_sequence_as(self.structure, list(states))
        y, new_states = self.cell(x, nested, training=training)
        if not keras.tree.is_nested(new_states):
            new_states = [new_states]
        return y, keras.tree.flatten(new_states)

    def gates(self, x, states):
        """The SGU gate `f` of this step, or `[]` for other cells."""
        if not is_sgu(self.cell):
            return []
        c = self.cell
        z = ops.matmul(x, c.kernel) + c.bias
        return [sgu_forget_gate(z, states[0], c.recurrent_kernel)]


@keras.saving.register_keras_serializable(package="superloop_cell")
class SGUStack(keras.layers.Layer):
    """The weights of `depth` SGU layers of one width, stacked.

    Weights (layer `l` is `kernel[l]` etc., as in `SGUCell`):
        kernel: `(depth, units, 2·units)`.
        recurrent_kernel: `(depth, units, units)`.
        bias: `(depth, 2·units)`.

    It is built by `SuperloopCell` from the `SGUCell`s of a run; it is not
    meant to be constructed by hand.

    Args:
        depth: Positive integer, number of stacked layers.
        units: Positive integer, width of each layer.
        kernel_initializers / recurrent_initializers / bias_initializers:
            one initializer per layer (taken from the run's `SGUCell`s), or
            None for the `SGUCell` defaults.
    """

    def __init__(
        self,
        depth,
        units,
        kernel_initializers=None,
        recurrent_initializers=None,
        bias_initializers=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.depth = _validation.positive_int("depth", depth)
        self.units = _validation.positive_int("units", units)
        default = SGUCell(1)

        def per_layer(initializers, fallback):
            if initializers is None:
                return [fallback] * self.depth
            return [keras.initializers.get(i) for i in initializers]

        self.kernel_initializers = per_layer(
            kernel_initializers, default.kernel_initializer
        )
        self.recurrent_initializers = per_layer(
            recurrent_initializers, default.recurrent_initializer
        )
        self.bias_initializers = per_layer(
            bias_initializers, default.bias_initializer
        )

    def build(self, input_shape=None):
        d, u = self.depth, self.units
        self.kernel = self.add_weight(
            shape=(d, u, 2 * u),
            initializer=_StackedInitializer(self.kernel_initializers),
            name="kernel",
        )
        self.recurrent_kernel = self.add_weight(
            shape=(d, u, u),
            initializer=_StackedInitializer(self.recurrent_initializers),
            name="recurrent_kernel",
        )
        self.bias = self.add_weight(
            shape=(d, 2 * u),
            initializer=_StackedInitializer(self.bias_initializers),
            name="bias",
        )

    def call(self, x, states):
        """One step of the whole run.

        Args:
            x: `(batch, units)`, the input of the run's first layer.
            states: `(batch, depth·units)`, every layer's `h`, layer-major.

        Returns:
            `(y, new_states)`: the last layer's output `(batch, units)` and
            the new `(batch, depth·units)` states.
        """
        # Values, not variables: the custom gradient returns their gradients
        # as ordinary inputs.
        return sgu_run(
            x,
            states,
            ops.copy(self.kernel),
            ops.copy(self.recurrent_kernel),
            ops.copy(self.bias),
        )

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
            "units": self.units,
            "kernel_initializers": [
                keras.initializers.serialize(i) for i in self.kernel_initializers
            ],
            "recurrent_initializers": [
                keras.initializers.serialize(i)
                for i in self.recurrent_initializers
            ],
            "bias_initializers": [
                keras.initializers.serialize(i) for i in self.bias_initializers
            ],
        }


class SGURunStage:
    """A run of same-width `SGUCell`s, computed by one `SGUStack`.

    `indices`: the positions of the run's cells in the superloop's `cells`.
    """

    def __init__(self, cells, first_index, name):
        self.cells = cells
        self.indices = list(range(first_index, first_index + len(cells)))
        units = cells[0].units
        self.stack = SGUStack(
            depth=len(cells),
            units=units,
            kernel_initializers=[c.kernel_initializer for c in cells],
            recurrent_initializers=[c.recurrent_initializer for c in cells],
            bias_initializers=[c.bias_initializer for c in cells],
            name=name,
        )
        self.state_sizes = [len(cells) * units]
        self.output_size = units

    def build(self, input_dim):
        if not self.stack.built:
            self.stack.build()
            self.stack.built = True
        # The run's SGUCells own no weights (the stack does). Marked built
        # all the same: Keras trainers re-run a symbolic build of the whole
        # model on every step while any sublayer is unbuilt (seen on JAX:
        # 10 ms per train step).
        for cell in self.cells:
            cell.built = True

    def __call__(self, x, states, training=False):
        y, new_states = self.stack(x, states[0])
        return y, [new_states]

    def gates(self, x, states):
        """Every layer's SGU gate `f` of this step, computed layer by layer."""
        stack = self.stack
        u = stack.units
        gates = []
        for l in range(stack.depth):
            h = states[0][:, l * u : (l + 1) * u]
            z = ops.matmul(x, stack.kernel[l]) + stack.bias[l]
            gates.append(sgu_forget_gate(z, h, stack.recurrent_kernel[l]))
            x = sgu_update(z, h, stack.recurrent_kernel[l])
        return gates


def is_sgu(cell):
    """Whether `cell` is exactly an `SGUCell` (a subclass may differ)."""
    return type(cell) is SGUCell


def plan_stages(cells, fused):
    """Splits `cells` into stages: fused SGU runs where allowed, else cells.

    A run is consecutive `SGUCell`s of one width, after `cells[0]` (whose
    input width is only known at build), each reading a previous output of
    its own width. With `fused=True` every run of `MIN_FUSED_RUN` or more
    layers is fused, with `"auto"` every run of `AUTO_FUSED_RUN` or more,
    with False none.
    """
    shortest = AUTO_FUSED_RUN if fused == AUTO_FUSED else MIN_FUSED_RUN
    stages = [CellStage(cells[0], 0)]
    i = 1
    n_runs = 0
    while i < len(cells):
        j = i
        if fused and is_sgu(cells[i]):
            units = cells[i].units
            while (
                j < len(cells)
                and is_sgu(cells[j])
                and cells[j].units == units
                and stages_output_size(cells[j - 1]) == units
            ):
                j += 1
        if j - i >= shortest:
            stages.append(
                SGURunStage(cells[i:j], i, name=f"sgu_stack_{n_runs}")
            )
            n_runs += 1
            i = j
        else:
            stages.append(CellStage(cells[i], i))
            i += 1
    return stages


def stages_output_size(cell):
    """Output width of a cell, by the same rule as `keras.layers.RNN`."""
    size = getattr(cell, "output_size", None)
    if size is None:
        size = _state_structure(cell)[0]
    return size
