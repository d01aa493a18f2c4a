"""Prefect flows: retrain, score-folder and score-inbox."""
