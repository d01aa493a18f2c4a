"""Prefect flows: retrain and score-batch."""
