"""Image captioning: a pretrained CNN encoder and an Elman decoder (in progress, issue 5)."""
