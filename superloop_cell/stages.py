"""The stages of a superloop's recurrent stack, and the fused SGU run.

`SuperloopCell` runs its `cells` as a sequence of *stages*. A stage is either
one Keras RNN cell (`CellStage`, any cell at all), or — the fast path — a run
of consecutive same-width `SGUCell`s computed as one stacked layer
(`SGURunStage`).

The fast path is an implementation, not a weight layout: every `SGUCell`
owns its `kernel`, `recurrent_kernel` and `bias` whatever `fused` says, and
`SGURunStage` stacks them along a layer axis when it runs. Written cell by
cell, a 32-layer stack puts about a dozen saved intermediates per layer per
step into the RNN's loop and a gradient graph that grows with depth; the
fused run differentiates the whole run with the hand-written backward pass
of `cells/sgu_run.py`, which saves three stacked tensors per step.
"""

import keras
from keras import ops

from superloop_cell import _loops, _validation
from superloop_cell.cells.sgu import SGUCell
from superloop_cell.cells.sgu_run import sgu_run

MIN_FUSED_RUN = 2
# With `fused="auto"` (the default) only runs of this many layers or more are
# fused: the fused run's batched ops have a fixed cost per step that shorter
# runs do not earn back. On torch, where every op of Keras' eager loop pays
# dispatch and autograd bookkeeping, the fused run wins sooner: a train step
# (batch 32, T 16) took 1.07× the unfused cells' at depth 4, 0.81× at 8,
# 0.67× at 16 (`python -m benchmarks.torch_step --depths 4,8,16 --variants
# eager,fused`).
AUTO_FUSED_RUN = {"torch": 7}.get(keras.backend.backend(), 15)
AUTO_FUSED = "auto"  # the `fused` value that applies AUTO_FUSED_RUN


def state_structure(cell):
    """The cell's `state_size` as a list (Keras accepts a bare int)."""
    size = cell.state_size
    return list(size) if isinstance(size, (list, tuple)) else [size]


class CellStage:
    """One Keras RNN cell as a stage: its states are flattened at the edge.

    `indices`: the position of the cell in the superloop's `cells`.
    """

    def __init__(self, cell, index):
        self.cell = cell
        self.cells = [cell]
        self.indices = [index]
        self.structure = state_structure(cell)
        self.state_sizes = _validation.flat_state_sizes("cell", self.structure)
        self.output_size = stages_output_size(cell)

    def build(self, input_dim):
        if not self.cell.built:
            self.cell.build((None, input_dim))
            self.cell.built = True

    def __call__(self, x, states, training=False, with_gates=False):
        """`(y, new_states, gates)`: `gates` holds the SGU gate `f` of the
        step when `with_gates` and the cell is an `SGUCell`, else `[]`."""
        if with_gates and is_sgu(self.cell):
            y, gate = self.cell.step(x, states, training=training)
            return y, [y], [gate]
        nested = keras.tree.pack_sequence_as(self.structure, list(states))
        y, new_states = self.cell(x, nested, training=training)
        if not keras.tree.is_nested(new_states):
            new_states = [new_states]
        return y, keras.tree.flatten(new_states), []


class SGURunStage:
    """A run of same-width `SGUCell`s computed as one stacked layer.

    The run's states are one state of `depth·units` (every layer's `h`,
    layer-major); its weights stay in the cells and are stacked at call
    time.

    `indices`: the positions of the run's cells in the superloop's `cells`;
    `loop`: `sgu_run`'s `loop` (None: by depth).
    """

    def __init__(self, cells, first_index, loop=None):
        self.cells = list(cells)
        self.loop = loop
        self.indices = list(range(first_index, first_index + len(cells)))
        self.units = cells[0].units
        self.state_sizes = [len(cells) * self.units]
        self.output_size = self.units

    def build(self, input_dim):
        for cell in self.cells:
            if not cell.built:
                cell.build((None, self.units))
                cell.built = True

    def _stacked_weights(self):
        return [
            ops.stack([getattr(cell, kind).value for cell in self.cells])
            for kind in ("kernel", "recurrent_kernel", "bias")
        ]

    def __call__(self, x, states, training=False, with_gates=False):
        """`(y, new_states, gates)`; `gates` has every layer's `f` when
        `with_gates`, else is `[]`. In training with dropout in any of its
        cells the step is computed cell by cell (the cells' own masks)."""
        if training and any(cell.has_dropout for cell in self.cells):
            return self._cell_by_cell(x, states[0], with_gates)
        weights = _loops.loop_invariant(self._stacked_weights)
        if not with_gates:
            y, new_states = sgu_run(x, states[0], *weights, loop=self.loop)
            return y, [new_states], []
        y, new_states, gates = sgu_run(x, states[0], *weights,
                                       with_gates=True, loop=self.loop)
        return y, [new_states], ops.unstack(gates, len(self.cells))


    def _cell_by_cell(self, x, states, with_gates):
        hs = ops.split(states, len(self.cells), axis=-1)
        new_states, gates = [], []
        for cell, h in zip(self.cells, hs):
            x, gate = cell.step(x, [h], training=True)
            new_states.append(x)
            gates.append(gate)
        return x, [ops.concatenate(new_states, axis=-1)], (
            gates if with_gates else [])


def is_sgu(cell):
    """Whether `cell` is exactly an `SGUCell` (a subclass may differ)."""
    return type(cell) is SGUCell


def plan_stages(cells, fused, layer_loop=AUTO_FUSED):
    """Splits `cells` into stages: fused SGU runs where allowed, else cells.

    A run is consecutive `SGUCell`s of one width, after `cells[0]` (whose
    input width is only known at build), each reading a previous output of
    its own width. With `fused=True` every run of `MIN_FUSED_RUN` or more
    layers is fused, with `"auto"` every run of `AUTO_FUSED_RUN` or more,
    with False none. `layer_loop` is how a fused run walks its layers
    (`sgu_run`'s `loop`; `"auto"`: by depth).
    """
    loop = None if layer_loop == AUTO_FUSED else bool(layer_loop)
    shortest = AUTO_FUSED_RUN if fused == AUTO_FUSED else MIN_FUSED_RUN
    stages = [CellStage(cells[0], 0)]
    i = 1
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
            stages.append(SGURunStage(cells[i:j], i, loop))
            i = j
        else:
            stages.append(CellStage(cells[i], i))
            i += 1
    return stages


def stages_output_size(cell):
    """Output width of a cell, by the same rule as `keras.layers.RNN`."""
    size = getattr(cell, "output_size", None)
    if size is None:
        size = state_structure(cell)[0]
    return size
