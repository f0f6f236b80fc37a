"""The op graph of the real training step, for TensorBoard's graph view.

Keras 3's `TensorBoard(write_graph=True)` writes only the model config.
`GraphWriter` records the graph TensorFlow actually runs for one training
step (`tf.summary.trace_on(graph=True)` around the first batch of `fit`,
then `tf.summary.trace_export`): the train function with its function
library, where the RNN's while-loop body is a function of its own whose
ops sit under the superloop's component scopes (`sgu_0`, `control`,
`attention`...).
"""

import os

import keras
import tensorflow as tf

from superloop_cell.tensorboard._scopes import scope_of, scope_patterns

_WHILE_OPS = ("While", "StatelessWhile")


class GraphWriter(keras.callbacks.Callback):
    """Writes the op graph of the first training step of `fit`.

    The graph appears in TensorBoard's Graphs dashboard as the run's tag
    `name`; `read_step_graph` reads it back.

    Args:
        logdir: The run directory the event file is written to.
        name: The summary tag. Default `"train_step"`.
    """

    def __init__(self, logdir, name="train_step"):
        super().__init__()
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                "GraphWriter records TensorFlow graphs and needs the "
                "TensorFlow Keras backend; the backend is "
                f"{keras.backend.backend()!r}."
            )
        self.logdir = os.fspath(logdir)
        self.name = name
        self._tracing = False
        self._written = False

    def on_train_batch_begin(self, batch, logs=None):
        if not self._written and not self._tracing:
            tf.summary.trace_on(graph=True, profiler=False)
            self._tracing = True

    def on_train_batch_end(self, batch, logs=None):
        if self._tracing:
            writer = tf.summary.create_file_writer(self.logdir)
            with writer.as_default():
                tf.summary.trace_export(self.name, step=0)
            writer.close()
            self._tracing = False
            self._written = True

    def on_train_end(self, logs=None):
        if self._tracing:
            tf.summary.trace_off()
            self._tracing = False


def read_step_graph(logdir, name="train_step"):
    """The step's graph written by `GraphWriter`, as a `GraphDef`.

    Of the function graphs recorded during the step, returns the one with
    the largest function library: the train function, whose library holds
    the train step and the RNN's loop body and condition functions.

    Raises:
        ValueError: when `logdir` has no such graph.
    """
    from tensorboard.backend.event_processing import event_accumulator
    from tensorflow.core.protobuf import config_pb2

    accumulator = event_accumulator.EventAccumulator(
        os.fspath(logdir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    if name not in accumulator.Tags()[event_accumulator.TENSORS]:
        raise ValueError(
            f"No graph tagged {name!r} in {os.fspath(logdir)!r} (found "
            f"{accumulator.Tags()[event_accumulator.TENSORS]})."
        )
    event = accumulator.Tensors(name)[-1]
    run_metadata = config_pb2.RunMetadata()
    run_metadata.ParseFromString(event.tensor_proto.string_val[0])
    graphs = [g.pre_optimization_graph for g in run_metadata.function_graphs]
    if not graphs:
        raise ValueError(f"The trace {name!r} holds no function graph.")
    return max(graphs, key=lambda g: len(g.library.function))


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
