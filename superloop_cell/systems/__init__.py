"""External systems a superloop can drive, and their common protocol."""

from superloop_cell.systems.attention import Attention
from superloop_cell.systems.base import ExternalSystem
from superloop_cell.systems.content_memory import ContentMemory
from superloop_cell.systems.hard_attention import HardAttention
from superloop_cell.systems.neural_deque import NeuralDeQue
from superloop_cell.systems.neural_queue import NeuralQueue
from superloop_cell.systems.neural_stack import NeuralStack
from superloop_cell.systems.register_memory import RegisterMemory

__all__ = [
    "Attention", "ContentMemory", "ExternalSystem", "HardAttention",
    "NeuralDeQue", "NeuralQueue", "NeuralStack", "RegisterMemory",
]
