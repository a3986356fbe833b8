"""Calibration: per-exit confidences on the held-out and test splits, the threshold solver,
anytime and dynamic evaluation, reports; writes ``calibration.json`` into a bundle."""
