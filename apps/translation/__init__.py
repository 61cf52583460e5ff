"""Translation: an Elman encoder-decoder with attention, English <-> Spanish."""
