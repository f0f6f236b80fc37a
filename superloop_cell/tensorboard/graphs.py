"""The op graph of the real training step, for TensorBoard's graph view.

Keras 3's `TensorBoard(write_graph=True)` writes only the model config.
`GraphWriter` records the graph TensorFlow actually runs for a training step
(`tf.summary.trace_on(graph=True)` around the first batch of `fit`, when the
train function is instantiated) and writes the train function's graph with
`tf.summary.graph`: its function library holds the train step and the RNN's
while-loop body, a function of its own whose ops sit under the superloop's
component scopes (`sgu_0`, `control`, `attention`...).
"""

import os
import tempfile

import keras
import tensorflow as tf
from tensorboard.backend.event_processing import (event_accumulator,
                                                  plugin_event_accumulator)
from tensorflow.core.protobuf import config_pb2

from superloop_cell.tensorboard._scopes import scope_of, scope_patterns

_WHILE_OPS = ("While", "StatelessWhile")
_TRACE_TAG = "train_step"


class GraphWriter(keras.callbacks.Callback):
    """Writes the op graph of the training step run by `fit`.

    The graph is the run's graph in TensorBoard's Graphs dashboard (open
    the `Functions` on the right for the loop body); `read_step_graph`
    reads it back. Graphs are recorded when TensorFlow instantiates a
    function, so this traces the first batch of the first `fit`.

    Args:
        logdir: The run directory the event file is written to.
    """

    def __init__(self, logdir):
        super().__init__()
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "GraphWriter records TensorFlow graphs and needs the "
                "TensorFlow Keras backend; the backend is "
                f"{keras.backend.backend()!r}."
            )
        self.logdir = os.fspath(logdir)
        self._tracing = False
        self._written = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self._written and not self._tracing:
            tf.summary.trace_on(graph=True, profiler=False)
            self._tracing = True

    def on_train_batch_end(self, batch, logs=None):
        if not self._tracing:
            return
        # The trace holds every function run in the batch (variable
        # initialisers too); keep the train function's graph only.
        with tempfile.TemporaryDirectory() as scratch:
            writer = tf.summary.create_file_writer(scratch)
            with writer.as_default():
                tf.summary.trace_export(_TRACE_TAG, step=0)
            writer.close()
            graph_def = _train_function_graph(scratch)
        self._tracing = False
        writer = tf.summary.create_file_writer(self.logdir)
        with writer.as_default():
            tf.summary.graph(graph_def)
        writer.close()
        self._written = True

    def on_train_end(self, logs=None):
        if self._tracing:
            tf.summary.trace_off()
            self._tracing = False


def _train_function_graph(trace_dir):
    """Of the traced function graphs, the one with the largest library."""
    accumulator = plugin_event_accumulator.EventAccumulator(
        trace_dir, size_guidance={plugin_event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    (event,) = accumulator.Tensors(_TRACE_TAG)
    run_metadata = config_pb2.RunMetadata()
    run_metadata.ParseFromString(event.tensor_proto.string_val[0])
    graphs = [g.pre_optimization_graph for g in run_metadata.function_graphs]
    if not graphs:
        raise RuntimeError("The traced train step recorded no graph.")
    return max(graphs, key=lambda g: len(g.library.function))


def read_step_graph(logdir):
    """The step's graph written by `GraphWriter`, as a `GraphDef`.

    Raises:
        ValueError: when `logdir` holds no graph.
    """
    accumulator = event_accumulator.EventAccumulator(os.fspath(logdir))
    accumulator.Reload()
    return accumulator.Graph()


def loop_body_functions(graph_def):
    """The library functions of `graph_def` that are `while` loop bodies.

    Found from the `body` attribute of every `While`/`StatelessWhile` node,
    in the graph and in every library function (the gradient loop's body
    is one too).
    """
    bodies = set()
    node_lists = [graph_def.node] + [f.node_def for f in
                                     graph_def.library.function]
    for nodes in node_lists:
        for node in nodes:
            if node.op in _WHILE_OPS:
                bodies.add(node.attr["body"].func.name)
    return [f for f in graph_def.library.function
            if f.signature.name in bodies]


def loop_body_ops(graph_def, cell):
    """The op names in the loop bodies of `graph_def`, per component.

    Args:
        graph_def: A `GraphDef` with its function library (for example
            from `read_step_graph`).
        cell: The `SuperloopCell` the graph runs.

    Returns:
        A dict from each scope of `component_scopes(cell)` (in step order)
        to the names of the loop-body nodes under it.
    """
    patterns = scope_patterns(cell)
    found = {scope: [] for scope in patterns}
    for function in loop_body_functions(graph_def):
        for node in function.node_def:
            scope = scope_of(node.name, patterns)
            if scope is not None:
                found[scope].append(node.name)
    return found
