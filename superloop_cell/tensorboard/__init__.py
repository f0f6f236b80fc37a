"""TensorBoard tooling for superloops (TensorFlow backend).

Import it explicitly: `import superloop_cell.tensorboard as sctb`. The core
package stays backend-neutral; this subpackage uses TensorFlow directly.

* Profiles: `ProfileSteps` (Keras callback) and `profile` (context manager)
  run the TF profiler; `read_profile` / `time_by_component` read the
  `*.xplane.pb` back and sum loop-body time per component scope.
* Op graph: `GraphWriter` records the graph of the real training step,
  while-loop body included; `read_step_graph` / `loop_body_ops` read it.
* Internals: `TraceImages` logs heatmaps, histograms and scalars of the
  superloop's traces on a probe batch every N epochs.

Viewing profiles in TensorBoard needs the profile plugin:
`pip install "superloop_cell[profile]"` (tensorboard-plugin-profile).
"""

from superloop_cell.tensorboard._scopes import component_scopes
from superloop_cell.tensorboard.graphs import (GraphWriter,
                                               loop_body_functions,
                                               loop_body_ops, read_step_graph)
from superloop_cell.tensorboard.internals import (TraceImages, colorize,
                                                  heatmap, trace_summaries)
from superloop_cell.traces import find_superloop_cell
from superloop_cell.tensorboard.profiles import (OTHER, ProfiledOp,
                                                 ProfileSteps, profile,
                                                 profile_files, read_profile,
                                                 time_by_component)

__all__ = [
    "GraphWriter",
    "OTHER",
    "ProfileSteps",
    "ProfiledOp",
    "TraceImages",
    "colorize",
    "component_scopes",
    "find_superloop_cell",
    "heatmap",
    "loop_body_functions",
    "loop_body_ops",
    "profile",
    "profile_files",
    "read_profile",
    "read_step_graph",
    "time_by_component",
    "trace_summaries",
]
