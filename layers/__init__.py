"""Keras layers of elman: the Elman cell, its fast layer, pooling over its states, truncated BPTT."""

from elman.layers.elman_cell import ElmanCell
from elman.layers.elman_rnn import ElmanRNN
from elman.layers.pooling import StatePooling
from elman.layers.truncated import TruncatedBackprop

__all__ = ["ElmanCell", "ElmanRNN", "StatePooling", "TruncatedBackprop"]
