"""Bottleneck Studio: retrain an image classifier on your own photos."""

__version__ = "0.1.0"
