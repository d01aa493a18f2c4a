"""The promotion rule on its own: the quality floor and the comparison with the champion."""

from __future__ import annotations

import numpy as np

from dfd import evaluate, promotion


def _interval(y: np.ndarray, s: np.ndarray, groups=None) -> dict:
    low, high = evaluate.auc_interval(y, s, groups)
    return {"auc": evaluate.auc(y, s), "low": low, "high": high, "groups": len(set(groups)) if groups is not None
            else len(y)}


def test_a_constant_model_is_refused_by_the_floor():
    y = np.r_[np.zeros(60), np.ones(60)]
    constant = np.full(120, 0.5)
    verdict = promotion.quality_floor({"validation": _interval(y, constant), "test": _interval(y, constant)},
                                      min_auc=0.55)
    assert verdict["passed"] is False
    assert verdict["reason"].startswith("no better than chance: ")
    assert "validation AUC 0.500" in verdict["reason"] and "DFD_MIN_AUC" in verdict["reason"]


def test_a_model_good_on_validation_but_at_chance_on_test_is_refused():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100), np.ones(100)]
    good, coin = y + rng.normal(0, 0.3, 200), rng.random(200)
    verdict = promotion.quality_floor({"validation": _interval(y, good), "test": _interval(y, coin)}, 0.55)
    assert not verdict["passed"]
    assert "test AUC" in verdict["reason"] and "validation AUC" not in verdict["reason"]


def test_a_clearly_better_than_chance_model_passes_and_the_floor_is_a_setting():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(100), np.ones(100)]
    s = y * 0.4 + rng.random(200)  # AUC about 1 - 0.6**2 / 2 = 0.82
    intervals = {"validation": _interval(y, s), "test": _interval(y, s)}
    assert promotion.quality_floor(intervals, 0.55)["passed"]
    assert not promotion.quality_floor(intervals, 0.95)["passed"]


def test_a_nan_interval_never_passes_unless_the_floor_is_off():
    nan = {"auc": float("nan"), "low": float("nan"), "high": float("nan"), "groups": 3}
    assert not promotion.quality_floor({"validation": nan}, 0.5)["passed"]
    off = promotion.quality_floor({"validation": nan}, 0.0)
    assert off["passed"] and "off" in off["reason"]


def test_versus_champion_uses_the_tolerance():
    ok, reason = promotion.versus_champion(0.90, "v1", 0.903, 0.005, 40)
    assert ok and "not worse than champion v1's 0.9030 on the same 40 test images" in reason
    worse, reason = promotion.versus_champion(0.80, "v1", 0.90, 0.005, 40)
    assert not worse and "is worse than" in reason
