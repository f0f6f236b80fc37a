"""Recurrent cells for the stack inside a superloop."""

from superloop_cell.cells.sgu import SGUCell, sgu_update

__all__ = ["SGUCell", "sgu_update"]
