"""Evaluation rules and metrics on hand-checked numbers."""

from __future__ import annotations

import numpy as np

from dfd import evaluate


def test_threshold_maximises_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    t = evaluate.choose_threshold(y, s)
    assert 0.7 < t <= 0.8
    assert evaluate.at_threshold(y, s, t)["balanced_accuracy"] == 1.0


def test_metrics_on_known_values():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.9])
    m = evaluate.metrics(y, s, 0.5)
    assert m["roc_auc"] == 0.75
    assert m["at_threshold"]["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["at_threshold"]["per_class_accuracy"] == {"real": 0.5, "deepfake": 0.5}
    assert m["eer"] == 0.5
    assert m["n_real"] == 2 and m["n_deepfake"] == 2


def test_temperature_fixes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    true_p = np.where(y == 1, 0.7, 0.3)  # the model is right 70% of the time ...
    y = (rng.random(4000) < true_p).astype(int)
    overconfident = np.where(true_p > 0.5, 0.99, 0.01)  # ... but claims 99%
    t = evaluate.fit_temperature(y, overconfident)
    calibrated = evaluate.apply_temperature(overconfident, t)
    assert t > 2
    assert evaluate.expected_calibration_error(y, calibrated) < 0.03 < evaluate.expected_calibration_error(
        y, overconfident)
