"""Keras layers of elman: the Elman cell, its fast layer, pooling over its states, truncated BPTT,
word dropout, adversarial training on embeddings, ensembles inside one model, stochastic weight
averaging, one cell stepped on each object apart."""

from elman.layers.adversarial import AdversarialModel, EmbeddingPerturbation
from elman.layers.elman_cell import ElmanCell
from elman.layers.elman_rnn import ElmanRNN
from elman.layers.ensemble import EnsembleAverage, ensemble_binary_crossentropy
from elman.layers.objectwise import ObjectwiseCell
from elman.layers.pooling import StatePooling
from elman.layers.truncated import TruncatedBackprop
from elman.layers.weight_averaging import AveragingAdam
from elman.layers.word_dropout import WordDropout

__all__ = ["AdversarialModel", "AveragingAdam", "ElmanCell", "ElmanRNN", "EmbeddingPerturbation",
           "EnsembleAverage", "ObjectwiseCell", "StatePooling", "TruncatedBackprop",
           "WordDropout", "ensemble_binary_crossentropy"]
