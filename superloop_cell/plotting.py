"""Plots of one sample's traces: one panel per component, time on x.

Needs matplotlib (`pip install superloop_cell[plots]`); imported lazily so
that the package itself does not depend on it.
"""

import numpy as np

from superloop_cell.traces import group_traces


def plot_traces(traces, path, sample=0, title=None, axis_labels=None):
    """Writes a PNG of one sample's traces.

    Panels: the SGU gates (mean `f` per layer, layers × time); per system,
    a heatmap of each wider trace (attention weights over positions,
    register store/recall, stack strengths, a hard head's move
    probabilities), the first with the system's scalar traces
    (attention position, push, pop) drawn over it as lines.

    Args:
        traces: Dict from `run_with_traces`: `(batch, time, width)` arrays.
        path: Where to write the PNG.
        sample: Which batch row to plot. Default 0.
        title: Optional figure title.
        axis_labels: Optional dict from a trace name to the label of its
            heatmap's row axis, usually `superloop_cell.trace_axis_labels(
            cell)`; rows are `"slot"`s otherwise.

    Returns:
        `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not traces:
        raise ValueError("`traces` is empty: was the cell built with systems "
                         "or SGU layers?")
    gates, systems = group_traces(
        {k: np.asarray(v)[sample] for k, v in traces.items()}, axis_labels
    )
    panels = []
    if gates:
        layer_means = np.stack([v.mean(axis=-1) for v in gates.values()])
        panels.append(("SGU gate f (mean per layer)", layer_means,
                       "layer", {}))
    for name, group in systems.items():
        # The system's one-value traces are drawn over its first heatmap.
        lines = group.lines
        for key, matrix in group.heatmaps.items():
            panels.append((f"{name}: {key}", matrix.T,
                           group.row_labels[key], lines))
            lines = {}
        if lines:
            panels.append((f"{name}", None, "", lines))
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.2 * len(panels)),
                             squeeze=False, sharex=True)
    for ax, (label, matrix, ylabel, lines) in zip(axes[:, 0], panels):
        if matrix is not None:
            image = ax.imshow(matrix, aspect="auto", origin="lower",
                              interpolation="nearest", cmap="viridis")
            fig.colorbar(image, ax=ax, pad=0.01)
        # A position is in slot units and shares the heatmap's axis; other
        # one-value traces (push, pop in [0, 1]) get an axis of their own.
        on_slots = {k: v for k, v in lines.items()
                    if matrix is None or k == "position"}
        own_axis = {k: v for k, v in lines.items() if k not in on_slots}
        for line_name, values in on_slots.items():
            ax.plot(values, color="white" if matrix is not None else None,
                    linewidth=1.5, label=line_name)
        if on_slots:
            ax.legend(loc="upper left", fontsize=7)
        if own_axis:
            twin = ax.twinx()
            for line_name, values in own_axis.items():
                twin.plot(values, linewidth=1.2, label=line_name)
            twin.set_ylim(-0.05, 1.05)
            twin.legend(loc="upper right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel(ylabel)
    axes[-1, 0].set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
