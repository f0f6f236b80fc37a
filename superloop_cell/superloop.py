"""`SuperloopCell`: an RNN stack and its external systems as one Keras cell.

One step, with `x_t` the step's input and `feedback_0 = 0`:

    u_t        = concat([x_t, feedback_{t−1}])
    y          = cells[-1](… cells[0](u_t) …)        each cell's output feeds
                                                     the next one
    controls   = y · control_kernel + control_bias   one projection, split
                                                     per system in order
    feedback_t = concat([system(control_i) for each system])

The cell's output is `y` (followed by the traces when some are asked for).
Its state is a `SuperloopState` (output, feedback, every stage's and every
system's states), carried by Keras as the flat list that
`state_layout.StateLayout` describes.
"""

import re

import keras
from keras import ops

# Keras' RNN draws the dropout masks of a cell of this class before its
# loop and clears them after (see `get_dropout_mask`).
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from superloop_cell import _validation
from superloop_cell._random import KEY_SIZE
from superloop_cell.stages import (
    AUTO_FUSED,
    is_sgu,
    plan_stages,
    stages_output_size,
    state_structure,
)
from superloop_cell.state_layout import StateLayout, SuperloopState
from superloop_cell.systems.base import ExternalSystem


class _SlicedInitializer(keras.initializers.Initializer):
    """Initializes a control projection column block by column block."""

    def __init__(self, blocks):
        self.blocks = blocks  # [(width, initializer)], widths sum to columns

    def __call__(self, shape, dtype=None):
        parts = []
        for width, initializer in self.blocks:
            if width:
                parts.append(initializer(shape[:-1] + (width,), dtype=dtype))
        return ops.concatenate(parts, axis=-1)


def _check_cell(index, cell):
    where = f"cells[{index}]"
    if isinstance(cell, ExternalSystem):
        raise TypeError(
            f"`{where}` is an external system ({type(cell).__name__}); pass "
            "it in `systems`, not `cells`."
        )
    if isinstance(cell, keras.layers.RNN):
        raise TypeError(
            f"`{where}` is a `keras.layers.RNN` layer; pass its cell "
            f"(`{type(cell.cell).__name__}`) instead."
        )
    if not (
        isinstance(cell, keras.layers.Layer)
        and hasattr(cell, "state_size")
        and callable(getattr(cell, "call", None))
    ):
        raise TypeError(
            f"Received an invalid value for argument `{where}`: expected a "
            "Keras 3 RNN cell (a `keras.layers.Layer` with `state_size` and "
            f"`call(inputs, states)`), got {cell!r} (type "
            f"{type(cell).__name__})."
        )
    _validation.flat_state_sizes(where, cell.state_size)
    _validation.positive_int(f"{where}.output_size", stages_output_size(cell))


def _check_system(index, system):
    where = f"systems[{index}]"
    if not isinstance(system, ExternalSystem):
        raise TypeError(
            f"Received an invalid value for argument `{where}`: expected an "
            "instance of `superloop_cell.ExternalSystem`, got "
            f"{system!r} (type {type(system).__name__})."
        )
    for attribute in ("control_size", "output_size"):
        if not hasattr(system, attribute):
            raise TypeError(f"`{where}` does not set `{attribute}`.")
        _validation.positive_int(
            f"{where}.{attribute}", getattr(system, attribute)
        )
    sizes = getattr(system, "state_size", None)
    if not isinstance(sizes, (list, tuple)):
        raise TypeError(
            f"`{where}.state_size` must be a list of ints, got {sizes!r}."
        )
    for i, size in enumerate(sizes):
        _validation.positive_int(f"{where}.state_size[{i}]", size)
    key_state = system.key_state
    if key_state is not None:
        if (isinstance(key_state, bool) or not isinstance(key_state, int)
                or not 0 <= key_state < len(sizes)
                or sizes[key_state] != KEY_SIZE):
            raise ValueError(
                f"`{where}.key_state` must be None or the index of one of its "
                f"states of size {KEY_SIZE}, got {key_state!r} (state sizes "
                f"{list(sizes)})."
            )
    system.check_control_layout()
    labels = system.trace_labels
    if not isinstance(labels, dict):
        raise TypeError(
            f"`{where}.trace_labels` must be a dict from trace name to str, "
            f"got {labels!r}."
        )
    for key, label in labels.items():
        if key not in system.trace_sizes:
            raise ValueError(
                f"`{where}.trace_labels` names the trace {key!r}, which is "
                f"not in its `trace_sizes` ({list(system.trace_sizes)})."
            )
        if not isinstance(label, str):
            raise TypeError(
                f"`{where}.trace_labels[{key!r}]` must be a str, got "
                f"{label!r}."
            )


def _snake(name):
    # GRUCell → gru_cell, RegisterMemory → register_memory.
    return re.sub(
        r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name
    ).lower()


def _component_names(cells, systems):
    """Stable names per component: `sgu_0`…, `register_memory`, `control`.

    SGU layers are numbered among the SGU cells; other cells and the systems
    take their class name in snake case, suffixed `_1`, `_2`… when repeated.
    These are the trace keys and the name scopes in profiles.
    """
    seen = {}

    def name_of(obj, numbered):
        base = "sgu" if is_sgu(obj) else _snake(type(obj).__name__)
        count = seen.get(base, 0)
        seen[base] = count + 1
        if numbered or base == "sgu":
            return f"{base}_{count}"
        return base if count == 0 else f"{base}_{count}"

    return {
        "cells": [name_of(c, numbered=False) for c in cells],
        "systems": [name_of(s, numbered=False) for s in systems],
    }


def _full_trace_layout(cells, systems):
    """`(name, width)` of every trace a `trace=True` cell carries, in order."""
    names = _component_names(cells, systems)
    layout = []
    for name, cell in zip(names["cells"], cells):
        if is_sgu(cell):
            layout.append((f"{name}/gate", cell.units))
    for name, system in zip(names["systems"], systems):
        for key, width in system.trace_sizes.items():
            layout.append((f"{name}/{key}", int(width)))
    return layout


def trace_names(cells, systems=()):
    """The names of the traces a `SuperloopCell(cells, systems)` can carry.

    For example `["sgu_0/gate", "sgu_1/gate", "attention/position",
    "attention/weights"]`; any of them may be passed as `trace=[...]`.
    """
    return [name for name, _ in _full_trace_layout(list(cells), list(systems))]


def _trace_option(trace, cells, systems):
    """`(enabled, selection)` for the `trace` argument: selection is None
    (all traces) or a tuple of trace names."""
    if isinstance(trace, bool):
        return trace, None
    if not isinstance(trace, (list, tuple)) or not all(
        isinstance(name, str) for name in trace
    ):
        raise TypeError(
            "Received an invalid value for argument `trace`: expected True, "
            f"False or a list of trace names, got {trace!r} (type "
            f"{type(trace).__name__})."
        )
    known = trace_names(cells, systems)
    unknown = [name for name in trace if name not in known]
    if unknown or not trace:
        raise ValueError(
            "Received an invalid value for argument `trace`: "
            + (f"unknown trace names {unknown}" if unknown else "an empty list")
            + f"; this cell's traces are {known}."
        )
    return True, tuple(dict.fromkeys(trace))


@keras.saving.register_keras_serializable(package="superloop_cell")
class SuperloopCell(DropoutRNNCell, keras.layers.Layer):
    """A recurrent stack and its external systems as one Keras 3 RNN cell.

    Use it like any cell: `keras.layers.RNN(SuperloopCell(...))` runs the
    whole superloop as one loop over sequences of any length, with masking,
    `unroll=True`, `return_state=True` and `.keras` saving.

    Args:
        cells: Non-empty list of Keras 3 RNN cells (`SGUCell`, `GRUCell`,
            `LSTMCell`, `SimpleRNNCell`, or your own), run in order.
        systems: List of `ExternalSystem`s driven by the stack's output.
            Default: none, which makes the cell a plain stacked RNN.
        control_kernel_initializer: Initializer of `control_kernel` for the
            slices of systems that bring none. Default `"glorot_uniform"`.
        control_bias_initializer: Same for `control_bias`. Default `"zeros"`.
        fused: How a run of consecutive `SGUCell`s of one width after
            `cells[0]` (each reading the previous cell's output of that
            width) is computed: as one stacked layer with a hand-written
            gradient (see `stages.py`), or cell by cell. `"auto"` (default)
            fuses runs of 15 or more layers (a stack of 16 or more
            `SGUCell`s; on torch, 7 or more: a stack of 8), True every run
            of two or more, False none. Outputs
            and weights are the same either way (each `SGUCell` owns its
            weights; a checkpoint loads whatever `fused` says); the fused
            run keeps the graph from growing with depth, but its batched
            ops have a fixed cost per step that short runs do not earn
            back. A fused run's states are one state of `depth·units`. In
            training, a run with dropout in any of its cells computes the
            step cell by cell (the cells' own masks, which Keras draws once
            per sequence, as for any cell with dropout).
        layer_loop: How a fused run walks its layers within a step: written
            out (False: the fewest ops per step) or in a loop over groups of
            layers (True: the graph, and with it the time to trace and to
            compile with XLA, does not grow with depth, at some cost per
            step). `"auto"` (default) picks per backend what trained
            fastest end to end on mixed lengths: always loops on JAX (which
            compiles every train step), in runs of more than 32 layers on
            TensorFlow, never on torch (which compiles nothing: the loop
            there only costs). TensorFlow's rule is for its uncompiled
            step (Keras' default on a CPU-only machine), which traces once
            for all lengths; under `jit_compile=True` (Keras' default for
            TensorFlow when a GPU is present) XLA compiles each shape and
            True trained faster end to end, so pass it there.
            Compiled training on many sequence shapes (a new shape, a new
            compilation) gains from True; long training on few shapes from
            False. Outputs and weights are the same either way.
        trace: Whether the cell's output also carries, per step, what every
            component did (see `trace_layout`, `split_output` and
            `superloop_cell.run_with_traces`): each SGU layer's gate `f`
            and each system's `trace`. Default False; the default path
            computes none of it. A list of trace names (such as
            `["attention/position"]`, see `trace_names(cells, systems)`)
            carries only those, and computes only the components they
            come from: cheap enough to train on, e.g. a loss on the head's
            position at every step.
        output_feedback: Whether the cell's output at step t also carries
            what the systems returned at step t, computed from `y_t`:
            `[y_t, feedback_t]` (the readout of the NTM and the DNC, whose
            output layer sees the memory read of the same step). Default
            False: `y_t` only, the reads reaching the output through the
            stack at step t+1. A masked step keeps the whole output.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: `(batch, features)`, one time step; `features` may be 0 for
            a superloop driven only by its own feedback.
        states: flat list laid out as in `state_size` (see `layout` and
            `split_states`); the first state is the previous output.
        training: Passed to the cells and systems.

    Output shape:
        `(output, new_states)`: `output` is `y`, of shape `(batch,
        cells[-1].output_size)`; with `output_feedback=True` `[y,
        feedback]`, `(batch, y_size + feedback_size)`; with `trace`, the
        traces follow in the same tensor (`split_output` takes it apart).

    Example:

    ```python
    cell = SuperloopCell(
        cells=[SGUCell(16) for _ in range(4)],
        systems=[RegisterMemory(registers=4, width=8)],
    )
    y = keras.layers.RNN(cell, return_sequences=True)(keras.Input((None, 2)))
    ```
    """

    def __init__(
        self,
        cells,
        systems=(),
        control_kernel_initializer="glorot_uniform",
        control_bias_initializer="zeros",
        fused="auto",
        layer_loop="auto",
        trace=False,
        output_feedback=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(cells, (list, tuple)):
            raise TypeError(
                "Received an invalid value for argument `cells`: expected a "
                f"list of RNN cells, got {cells!r} (type "
                f"{type(cells).__name__})."
            )
        if not cells:
            raise ValueError(
                "Received an invalid value for argument `cells`: expected at "
                "least one RNN cell, got an empty list."
            )
        if not isinstance(systems, (list, tuple)):
            raise TypeError(
                "Received an invalid value for argument `systems`: expected a "
                f"list of ExternalSystems, got {systems!r} (type "
                f"{type(systems).__name__})."
            )
        for i, cell in enumerate(cells):
            _check_cell(i, cell)
        for i, system in enumerate(systems):
            _check_system(i, system)
        self.cells = list(cells)
        self.systems = list(systems)
        self.fused = _validation.boolean_or("fused", fused, (AUTO_FUSED,))
        self.layer_loop = _validation.boolean_or(
            "layer_loop", layer_loop, (AUTO_FUSED,)
        )
        self.trace, self._trace_selection = _trace_option(
            trace, self.cells, self.systems
        )
        self.output_feedback = _validation.boolean(
            "output_feedback", output_feedback)
        if self.output_feedback and not self.systems:
            raise ValueError(
                "Received an invalid value for argument `output_feedback`: "
                "True needs at least one system to read from, but `systems` "
                "is empty."
            )
        self.control_kernel_initializer = keras.initializers.get(
            control_kernel_initializer
        )
        self.control_bias_initializer = keras.initializers.get(
            control_bias_initializer
        )
        self.feedback_size = sum(s.output_size for s in self.systems)
        self.control_size = sum(s.control_size for s in self.systems)
        self.y_size = stages_output_size(self.cells[-1])
        self.component_names = _component_names(self.cells, self.systems)
        self.trace_layout = self._trace_layout() if self.trace else []
        # The output: [y, feedback (with `output_feedback`), traces...].
        self.output_size = (
            self.y_size + self.output_feedback * self.feedback_size
            + sum(w for _, w in self.trace_layout)
        )
        # Keras' RNN reads `state_size` when it is constructed, so the stage
        # plan (and with it the state layout) depends on the cells alone.
        self._stages = plan_stages(self.cells, self.fused, self.layer_loop)
        self.fused_runs = sum(len(stage.cells) > 1 for stage in self._stages)
        # Name scopes of the step, stable across models: `sgu_0`, a fused
        # run `sgu_1_to_31`, `gru_cell`, `register_memory`, `control`, ...
        names = self.component_names["cells"]
        self._stage_scopes = []
        for stage in self._stages:
            first, last = stage.indices[0], stage.indices[-1]
            scope = names[first]
            if last != first:  # a fused run: sgu_<first>_to_<last>
                scope += "_to_" + names[last].rsplit("_", 1)[-1]
            self._stage_scopes.append(scope)
        self._stage_gate_names = [
            [names[i] + "/gate" for i in stage.indices if is_sgu(self.cells[i])]
            for stage in self._stages
        ]
        self._input_dim = None
        self.layout = StateLayout(
            self.output_size,
            self.feedback_size,
            [stage.state_sizes for stage in self._stages],
            [list(system.state_size) for system in self.systems],
            [system.context_shape is not None for system in self.systems],
        )
        self.state_size = list(self.layout.sizes)

    # ------------------------------------------------------------------ build

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(
                "SuperloopCell expects one time step of shape (batch, "
                "features), i.e. RNN inputs of shape (batch, time, features); "
                f"received a step of shape {tuple(input_shape)}."
            )
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "SuperloopCell needs a known feature width; received inputs "
                f"of step shape {tuple(input_shape)}."
            )
        self._input_dim = int(input_dim)
        width = self._input_dim + self.feedback_size
        for stage in self._stages:
            stage.build(width)
            width = stage.output_size
        if self.systems:
            # One projection for all systems; each system may bring the
            # initializers of its own columns, and starting values for its
            # named control fields (`control_bias={...}`).
            self.control_kernel = self.add_weight(
                shape=(self.y_size, self.control_size),
                initializer=_SlicedInitializer([
                    (s.control_size, s.control_kernel_initializer
                     or self.control_kernel_initializer)
                    for s in self.systems
                ]),
                name="control_kernel",
            )
            self.control_bias = self.add_weight(
                shape=(self.control_size,),
                initializer=_SlicedInitializer([
                    (s.control_size,
                     s.control_bias_start(self.control_bias_initializer))
                    for s in self.systems
                ]),
                name="control_bias",
            )
            for system in self.systems:
                system.build((None, system.control_size))

    @property
    def scope_names(self):
        """The name scopes of the step, in the order it runs them.

        One per stage (`sgu_0`, a fused run `sgu_1_to_31`, `gru_cell`...),
        then `control` and one per system (`register_memory`, `attention`,
        ...) when there are systems. Profiles and op graphs show them.
        """
        scopes = list(self._stage_scopes)
        if self.systems:
            scopes.append("control")
            scopes.extend(self.component_names["systems"])
        return scopes

    def _trace_layout(self):
        return [
            (name, width)
            for name, width in _full_trace_layout(self.cells, self.systems)
            if self._traced(name)
        ]

    def _traced(self, name):
        selection = self._trace_selection
        return self.trace and (selection is None or name in selection)

    def split_output(self, outputs, with_feedback=False):
        """Splits the cell's output into `y`, the systems' outputs (with
        `output_feedback=True`) and the traces (with `trace`).

        Args:
            outputs: `(..., output_size)`: a NumPy array or tensor, e.g. the
                `(batch, time, output_size)` of `return_sequences=True`.
            with_feedback: Whether to return the feedback part too.

        Returns:
            `(y, traces)`, or with `with_feedback` `(y, feedback, traces)`:
            `y` is `(..., y_size)`; `feedback` `(..., feedback_size)`, what
            the systems returned at the same step (None without
            `output_feedback`); `traces` maps names such as
            `"sgu_3/gate"`, `"attention/weights"` to `(..., width)`.
        """
        y = outputs[..., : self.y_size]
        start = self.y_size
        feedback = None
        if self.output_feedback:
            feedback = outputs[..., start : start + self.feedback_size]
            start += self.feedback_size
        traces = {}
        for name, width in self.trace_layout:
            traces[name] = outputs[..., start : start + width]
            start += width
        if with_feedback:
            return y, feedback, traces
        return y, traces

    def split_states(self, states):
        """Names the parts of a flat state list (e.g. from `return_state`).

        Returns:
            A `SuperloopState(output, feedback, stages, systems)`: the
            previous output, the feedback (None without systems), one list
            of states per stage (a cell, or a fused SGU run) and one per
            system, in order.
        """
        return self.layout.split(states)

    def system_states(self, states, system):
        """The states of one system (an index or the object itself)."""
        index = system if isinstance(system, int) else self.systems.index(system)
        return self.layout.split(states).systems[index]

    def get_initial_state(self, batch_size=None):
        """The states at the start of a sequence, for `keras.layers.RNN`.

        Zeros for the output, the feedback and the cells' states, and each
        system's `get_initial_state(batch_size)` (called here, inside the
        model, so a learned initial state is trained). A cell whose systems
        read per-sample data raises: build its states with
        `superloop_cell.initial_state(cell, sequences, contexts)`, which
        calls `initial_states_with` — the same code with the data put in.
        """
        for i, system in enumerate(self.systems):
            if system.context_shape is not None:
                raise ValueError(
                    f"`systems[{i}]` ({type(system).__name__}) reads "
                    "per-sample data of shape "
                    f"{tuple(system.context_shape)}, but no initial state was "
                    "given. Build it with `superloop_cell.initial_state(cell, "
                    "sequences, contexts)` and pass it as "
                    "`keras.layers.RNN(cell)(sequences, initial_state=...)`."
                )
        return self.initial_states_with(batch_size, ())

    def initial_states_with(self, batch_size, contexts):
        """`get_initial_state(batch_size)` with each context in place.

        Args:
            batch_size: Int or scalar tensor.
            contexts: One `(batch, *context_shape)` tensor per system that
                reads a context, in the order of `systems` (checked by
                `superloop_cell.initial_state`).

        Returns:
            The flat list of `(batch, size)` states, in the compute dtype.
        """
        contexts = iter(contexts)

        def zeros(size):
            return ops.zeros((batch_size, size), dtype=self.compute_dtype)

        systems = []
        for system in self.systems:
            states = [ops.cast(s, self.compute_dtype)
                      for s in system.get_initial_state(batch_size)]
            if system.context_shape is not None:
                context = next(contexts, None)
                if context is not None:
                    states[-1] = ops.reshape(
                        ops.cast(context, self.compute_dtype),
                        (batch_size, system.state_size[-1]),
                    )
            systems.append(states)
        state = SuperloopState(
            output=zeros(self.output_size),
            feedback=zeros(self.feedback_size) if self.systems else None,
            stages=[[zeros(s) for s in stage.state_sizes]
                    for stage in self._stages],
            systems=systems,
        )
        return self.layout.join(state)

    # ------------------------------------------------------------------- step

    def _check_step_input(self, inputs):
        if len(inputs.shape) != 2:
            raise ValueError(
                "SuperloopCell expects one time step of shape (batch, "
                f"features); received shape {tuple(inputs.shape)}."
            )
        width = inputs.shape[-1]
        if width is not None and width != self._input_dim:
            raise ValueError(
                f"SuperloopCell `{self.name}` was built for inputs with "
                f"{self._input_dim} features, but received {width} features "
                f"(step shape {tuple(inputs.shape)})."
            )
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if not dtype.startswith(("float", "bfloat")):
            raise TypeError(
                "SuperloopCell expects floating-point inputs; received dtype "
                f"{dtype}. Cast the sequences (e.g. `ops.cast(x, 'float32')`)."
            )

    # ---------------------------------------------------------- dropout
    # The superloop drops nothing itself; its cells' dropout masks (an
    # `SGUCell`'s, a `GRUCell`'s, ...) are drawn here, once per sequence
    # before Keras' loop, as Keras does for a cell of its own.
    dropout = recurrent_dropout = 0.0

    def _dropout_cells(self):
        """`(cell, input width)` of every cell that keeps dropout masks."""
        width = self._input_dim + self.feedback_size
        for stage in self._stages:
            for cell in stage.cells:
                if isinstance(cell, DropoutRNNCell):
                    yield cell, width
                width = stages_output_size(cell)

    def get_dropout_mask(self, step_input):
        """Draws every cell's input and recurrent dropout masks for the
        batch of `step_input` (Keras' RNN calls it before its loop)."""
        batch = ops.shape(step_input)[0]
        for cell, width in self._dropout_cells():
            dtype = cell.compute_dtype
            if getattr(cell, "dropout", 0) > 0:
                cell.get_dropout_mask(ops.zeros((batch, width), dtype))
            if getattr(cell, "recurrent_dropout", 0) > 0:
                cell.get_recurrent_dropout_mask(
                    ops.zeros((batch, state_structure(cell)[0]), dtype))
        return None

    def get_recurrent_dropout_mask(self, step_input):
        return None

    def reset_dropout_mask(self):
        for cell, _ in self._dropout_cells():
            cell.reset_dropout_mask()

    def reset_recurrent_dropout_mask(self):
        for cell, _ in self._dropout_cells():
            cell.reset_recurrent_dropout_mask()

    # ------------------------------------------------------------- step

    def call(self, inputs, states, training=False):
        self._check_step_input(inputs)
        state = self.layout.split(states)
        x = inputs
        if state.feedback is not None:
            x = ops.concatenate([inputs, state.feedback], axis=-1)
        traces = {}
        stage_states = []
        for stage, scope, gate_names, own_states in zip(
            self._stages, self._stage_scopes, self._stage_gate_names,
            state.stages,
        ):
            wanted = [self._traced(name) for name in gate_names]
            with keras.name_scope(scope):
                x, new_states, gates = stage(
                    x, own_states, training=training, with_gates=any(wanted)
                )
            traces.update(
                (name, gate)
                for name, gate, keep in zip(gate_names, gates, wanted) if keep
            )
            stage_states.append(new_states)
        y = x
        feedback, system_states = None, []
        if self.systems:
            with keras.name_scope("control"):
                controls = (
                    ops.matmul(y, self.control_kernel) + self.control_bias
                )
            outputs = []
            for system, control, scope, own_states in zip(
                self.systems,
                self._per_system(controls),
                self.component_names["systems"],
                state.systems,
            ):
                keys = [k for k in system.trace_sizes
                        if self._traced(f"{scope}/{k}")]
                with keras.name_scope(scope):
                    if keys:
                        out, new_states, step_traces = system(
                            control, own_states, training=training,
                            traces=True,
                        )
                        traces.update(
                            (f"{scope}/{k}", step_traces[k]) for k in keys
                        )
                    else:
                        out, new_states = system(
                            control, own_states, training=training
                        )
                outputs.append(out)
                system_states.append(list(new_states))
            feedback = (
                ops.concatenate(outputs, axis=-1)
                if len(outputs) > 1 else outputs[0]
            )
        output = y
        if self.output_feedback:
            output = ops.concatenate([y, ops.cast(feedback, y.dtype)],
                                     axis=-1)
        output = self._with_traces(output, traces)
        return output, self.layout.join(
            SuperloopState(output, feedback, stage_states, system_states)
        )

    def _per_system(self, controls):
        """The control projection cut into one control per system."""
        if len(self.systems) == 1:
            return [controls]
        # One split, not a slice per system: a slice's gradient is a
        # zero-filled tensor of the projection's size.
        ends, end = [], 0
        for system in self.systems[:-1]:
            end += system.control_size
            ends.append(end)
        return ops.split(controls, ends, axis=-1)

    def _with_traces(self, y, traces):
        if not self.trace:
            return y
        return ops.concatenate(
            [y] + [ops.cast(traces[name], y.dtype)
                   for name, _ in self.trace_layout],
            axis=-1,
        )

    # ----------------------------------------------------------------- config

    def get_config(self):
        return {
            **super().get_config(),
            "cells": [keras.saving.serialize_keras_object(c) for c in self.cells],
            "systems": [
                keras.saving.serialize_keras_object(s) for s in self.systems
            ],
            "control_kernel_initializer": keras.initializers.serialize(
                self.control_kernel_initializer
            ),
            "control_bias_initializer": keras.initializers.serialize(
                self.control_bias_initializer
            ),
            "fused": self.fused,
            "layer_loop": self.layer_loop,
            "trace": (
                self.trace
                if self._trace_selection is None
                else list(self._trace_selection)
            ),
            "output_feedback": self.output_feedback,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["cells"] = [
            keras.saving.deserialize_keras_object(c) for c in config["cells"]
        ]
        config["systems"] = [
            keras.saving.deserialize_keras_object(s) for s in config["systems"]
        ]
        return cls(**config)


def check_superloop_cell(cell):
    """Raises `TypeError` naming the argument `cell` unless it is a
    `SuperloopCell` (for functions that take one)."""
    if not isinstance(cell, SuperloopCell):
        raise TypeError(
            "Received an invalid value for argument `cell`: expected a "
            f"SuperloopCell, got {cell!r} (type {type(cell).__name__})."
        )
