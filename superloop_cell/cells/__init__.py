"""Recurrent cells of the superloop stack, and their fused fast path."""

from superloop_cell.cells.sgu import SGUCell, sgu_step

__all__ = ["SGUCell", "sgu_step"]
