"""IMDB sentiment (many-to-one); the whole app is in `model.py`."""
