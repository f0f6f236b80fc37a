"""Per-step traces: what every component of a superloop did at every step.

Tracing is opt-in and leaves the trained cell alone: `traced_copy` makes a
`trace=True` twin of a cell with the same weights, whose output carries the
SGU gates and each system's `trace` after `y`; `run_with_traces` runs it
over a batch and returns the traces by name as NumPy arrays;
`trace_axis_labels` says what the entries of the wider ones are, and
`group_traces` sorts them into what the renderers draw (the PNG plots of
`superloop_cell.plotting` and TensorBoard's `TraceImages`).
"""

import re
from typing import NamedTuple

import keras
import numpy as np

from superloop_cell.context import initial_state
from superloop_cell.superloop import SuperloopCell, check_superloop_cell


def traced_copy(cell, input_dim):
    """A `trace=True` twin of `cell`, built, holding a copy of its weights.

    Args:
        cell: A built `SuperloopCell`.
        input_dim: Int, the feature width the cell was built for.
    """
    check_superloop_cell(cell)
    if not cell.built:
        raise ValueError(
            "`cell` must be built (called on data or part of a built model) "
            "before its traces can be taken."
        )
    config = {**cell.get_config(), "trace": True}
    config.pop("name", None)
    twin = SuperloopCell.from_config(config)
    twin.build((None, input_dim))
    twin.set_weights(cell.get_weights())
    return twin


def run_with_traces(cell, sequences, contexts=(), mask=None, twin=None):
    """Runs `cell` over `sequences` and returns its output and traces.

    Args:
        cell: A built `SuperloopCell` (e.g. `model.layers[i].cell`).
        sequences: `(batch, time, features)` array.
        contexts: The per-sample contexts of its systems, as for
            `superloop_cell.initial_state`.
        mask: Optional `(batch, time)` boolean mask.
        twin: A `traced_copy` to reuse (its weights are refreshed from
            `cell`); one is made when None.

    Returns:
        `(y, traces)`: `y` is `(batch, time, y_size)`, `traces` a dict of
        `(batch, time, width)` NumPy arrays keyed like `"sgu_0/gate"`,
        `"attention/weights"`, `"register_memory/store"`.
    """
    sequences = np.asarray(sequences, dtype=cell.compute_dtype)
    if sequences.ndim != 3:
        raise ValueError(
            "Received an invalid value for argument `sequences`: expected "
            f"shape (batch, time, features), got {sequences.shape}."
        )
    if twin is None:
        twin = traced_copy(cell, sequences.shape[-1])
    else:
        twin.set_weights(cell.get_weights())
    needs_context = any(s.context_shape is not None for s in twin.systems)
    states = initial_state(twin, sequences, contexts) if needs_context else None
    layer = keras.layers.RNN(twin, return_sequences=True)
    outputs = layer(sequences, initial_state=states, mask=mask)
    y, traces = twin.split_output(keras.ops.convert_to_numpy(outputs))
    return y, traces


def trace_axis_labels(cell):
    """What the entries of `cell`'s wider traces are, for plot axes.

    Args:
        cell: A `SuperloopCell`.

    Returns:
        A dict from trace name (`"register_memory/store"`) to the label its
        system declares in `trace_labels` (`"register"`); traces without
        one are left out (`plotting.plot_traces` calls their entries
        `"slot"`). A cell that carries a selection of traces
        (`trace=[...]`) gets labels for those only, so that the dict fits
        its `split_output`; any other cell, labels for every trace
        (`run_with_traces` returns them all).
    """
    check_superloop_cell(cell)
    labels = {
        f"{name}/{key}": label
        for name, system in zip(cell.component_names["systems"], cell.systems)
        for key, label in system.trace_labels.items()
    }
    if cell._trace_selection is not None:  # trace=[...]
        carried = {name for name, _ in cell.trace_layout}
        labels = {k: v for k, v in labels.items() if k in carried}
    return labels


def find_superloop_cell(model):
    """The one `SuperloopCell` run by a `keras.layers.RNN` inside `model`.

    Searches `model.layers` and the layers of nested models.

    Raises:
        ValueError: when there is none, or more than one (then pass the
            cell explicitly).
    """
    found = []
    pending = [model]
    while pending:
        layer = pending.pop()
        if isinstance(layer, keras.layers.RNN) and isinstance(
            layer.cell, SuperloopCell
        ):
            found.append(layer.cell)
        pending.extend(getattr(layer, "layers", []) or [])
    if len(found) != 1:
        raise ValueError(
            f"Expected exactly one `keras.layers.RNN` running a SuperloopCell "
            f"in model `{model.name}`, found {len(found)}"
            + (f" ({', '.join(c.name for c in found)})" if found else "")
            + ". Pass the cell explicitly with `cell=`."
        )
    return found[0]


GATE = "gate"
DEFAULT_ROW_LABEL = "slot"
# The name a SuperloopCell gives its i-th stage when it is an SGUCell.
_SGU_STAGE = re.compile(r"sgu_\d+")


class ComponentTraces(NamedTuple):
    """One system's traces, sorted for drawing.

    heatmaps: dict from trace key (`"weights"`) to its array
        `(..., steps, width)`, for the traces wider than one value.
    lines: dict from trace key (`"position"`) to its array `(..., steps)`,
        for the one-value traces.
    row_labels: dict from each heatmap's key to what its entries are
        (`"position"`, `"register"`, `"slot"` when the system says nothing).
    """

    heatmaps: dict
    lines: dict
    row_labels: dict


class TraceGroups(NamedTuple):
    """A superloop's traces, grouped by component, in the cell's order.

    gates: dict from stage (`"sgu_0"`) to its gate `f`, `(..., steps,
        units)`.
    systems: dict from system (`"attention"`) to its `ComponentTraces`.
    """

    gates: dict
    systems: dict


def group_traces(traces, axis_labels=None):
    """Sorts traces into SGU gates and per-system heatmaps and lines.

    Every renderer draws the same groups: the gates of the SGU stages
    (`"<stage>/gate"`); per system, a heatmap of each trace wider than one
    value and a line of each one-value trace.

    Args:
        traces: Dict from trace name (`"attention/weights"`) to an array
            `(..., steps, width)`, e.g. from `run_with_traces`; any leading
            axes (batch, or none for one sample) are kept.
        axis_labels: Optional dict from trace name to the label of its
            heatmap's rows, usually `trace_axis_labels(cell)`; rows are
            `"slot"`s otherwise.

    Returns:
        A `TraceGroups`.
    """
    axis_labels = {} if axis_labels is None else axis_labels
    if not isinstance(axis_labels, dict):
        raise TypeError(
            "Received an invalid value for argument `axis_labels`: expected "
            f"a dict from trace name to str, got {axis_labels!r}."
        )
    unknown = sorted(set(axis_labels) - set(traces))
    if unknown:
        raise ValueError(
            f"`axis_labels` names traces that are not in `traces`: {unknown}; "
            f"the traces are {sorted(traces)}."
        )
    gates, systems = {}, {}
    for name, value in traces.items():
        if "/" not in name:
            raise ValueError(
                "Received an invalid value for argument `traces`: expected "
                "names of the form `component/trace`, got "
                f"{name!r}."
            )
        component, key = name.split("/", 1)
        value = np.asarray(value)
        if key == GATE and _SGU_STAGE.fullmatch(component):
            gates[component] = value
            continue
        group = systems.setdefault(component, ComponentTraces({}, {}, {}))
        if value.shape[-1] == 1:
            group.lines[key] = value[..., 0]
        else:
            group.heatmaps[key] = value
            group.row_labels[key] = axis_labels.get(name, DEFAULT_ROW_LABEL)
    return TraceGroups(gates, systems)
