"""Keras layers of elman: the Elman cell and pooling over its states."""

from elman.layers.elman_cell import ElmanCell
from elman.layers.pooling import StatePooling

__all__ = ["ElmanCell", "StatePooling"]
