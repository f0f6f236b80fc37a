"""superloop_cell: memory-augmented RNNs as one Keras 3 RNN cell.

A superloop runs a recurrent stack whose output drives external systems
(a register memory, an attention head, your own) whose outputs come back as
extra input at the next step — all inside one cell, so
`keras.layers.RNN(SuperloopCell(...))` runs it as one loop.
"""

from superloop_cell.cells.feed_forward import FeedForwardCell
from superloop_cell.cells.sgu import SGUCell
from superloop_cell.data import BucketedSequences, mean_loss_weights
from superloop_cell.context import StepMask, SuperloopInitialState, initial_state
from superloop_cell.state_layout import StateLayout, SuperloopState
from superloop_cell.superloop import SuperloopCell, trace_names
from superloop_cell.traces import (find_superloop_cell, group_traces,
                                   run_with_traces, trace_axis_labels,
                                   traced_copy)
from superloop_cell.systems.attention import Attention
from superloop_cell.systems.base import ExternalSystem
from superloop_cell.systems.content_memory import ContentMemory
from superloop_cell.systems.hard_attention import HardAttention, reinforce_loss
from superloop_cell.systems.neural_deque import NeuralDeQue
from superloop_cell.systems.neural_queue import NeuralQueue
from superloop_cell.systems.neural_stack import NeuralStack
from superloop_cell.systems.register_memory import RegisterMemory
# The conformance harness, `superloop_cell.testing.check_system`.
from superloop_cell import testing

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "BucketedSequences",
    "ContentMemory",
    "ExternalSystem",
    "FeedForwardCell",
    "HardAttention",
    "NeuralDeQue",
    "NeuralQueue",
    "RegisterMemory",
    "SGUCell",
    "StateLayout",
    "StepMask",
    "SuperloopCell",
    "SuperloopInitialState",
    "SuperloopState",
    "NeuralStack",
    "find_superloop_cell",
    "group_traces",
    "initial_state",
    "mean_loss_weights",
    "reinforce_loss",
    "trace_names",
    "run_with_traces",
    "trace_axis_labels",
    "traced_copy",
]
