"""Keras layers of elman: the Elman cell, its fast layer, pooling over its states, truncated BPTT,
word dropout."""

from elman.layers.elman_cell import ElmanCell
from elman.layers.elman_rnn import ElmanRNN
from elman.layers.pooling import StatePooling
from elman.layers.truncated import TruncatedBackprop
from elman.layers.word_dropout import WordDropout

__all__ = ["ElmanCell", "ElmanRNN", "StatePooling", "TruncatedBackprop", "WordDropout"]
