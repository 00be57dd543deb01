"""The engine: pure Python and Keras, no Qt.

Modules are imported directly (``from app.core.intake.dataset import scan_dataset``); this package
imports nothing heavy so that a warm cache run never pays for TensorFlow's import.
"""
