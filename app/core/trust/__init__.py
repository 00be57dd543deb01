"""How far an answer can be trusted: calibration, the unknown score, evaluation."""
