"""Next-frame prediction: the Elman cell stepped on each tracked object of a video, on Moving
MNIST."""
