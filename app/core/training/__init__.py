"""Heads on cached features: the head's shape, the feeds from the store, the fit."""
