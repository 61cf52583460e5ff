"""Next-frame prediction: a per-frame CNN around an Elman recurrence, on Moving MNIST."""
