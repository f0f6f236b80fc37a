"""Cells of the superloop stack (recurrent, or feed-forward), and the SGU
run's fused fast path."""

from superloop_cell.cells.feed_forward import FeedForwardCell
from superloop_cell.cells.sgu import SGUCell, sgu_step

__all__ = ["FeedForwardCell", "SGUCell", "sgu_step"]
