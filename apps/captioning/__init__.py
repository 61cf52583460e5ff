"""Image captioning: a pretrained CNN encoder and an Elman decoder, on Flickr8k."""
