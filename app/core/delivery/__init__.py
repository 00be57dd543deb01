"""Answers out: the model folder's export, prediction, the standalone predict.py."""
