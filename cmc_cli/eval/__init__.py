"""Evaluation on top of the engine: TOFU unlearning metrics (tofu.py), reports (report.py)."""
