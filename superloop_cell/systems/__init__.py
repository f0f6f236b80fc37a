"""External systems a superloop can drive, and their common protocol."""

from superloop_cell.systems.attention import Attention
from superloop_cell.systems.base import ExternalSystem
from superloop_cell.systems.hard_attention import HardAttention
from superloop_cell.systems.neural_stack import NeuralStack
from superloop_cell.systems.register_memory import RegisterMemory

__all__ = [
    "Attention", "ExternalSystem", "HardAttention", "NeuralStack",
    "RegisterMemory",
]
