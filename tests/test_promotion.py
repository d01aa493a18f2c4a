"""The promotion rule on its own: the quality floor, the comparison with the champion (:func:`decide`) and the
compare-and-swap of the champion pointer (:func:`promote`) on a real local store, races included."""

from __future__ import annotations

import numpy as np
import pytest

from dfd import evaluate, promotion, registry
from dfd.storage import Conflict, LocalStore


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


# --- decide: the rule on plain numbers ------------------------------------------------------------------------
PASSED = {"passed": True, "reason": "AUC lower bounds are above the quality floor"}
FAILED = {"passed": False, "reason": "no better than chance: test AUC 0.500"}


def test_decide_refuses_a_candidate_below_the_floor_whatever_the_champion():
    for champion in (None, ("v1", 0.1)):
        decision = promotion.decide(0.99, champion, 0.005, 40, FAILED)
        assert decision == (False, FAILED["reason"]) and decision.label == "rejected"


def test_decide_promotes_the_first_model_and_compares_later_ones_with_the_tolerance():
    assert promotion.decide(0.6, None, 0.005, 40, PASSED) == (True, "no champion yet")
    close = promotion.decide(0.90, ("v1", 0.903), 0.005, 40, PASSED)
    assert close.promoted and close.label == "promoted" and "champion v1's 0.9030" in close.reason
    assert not promotion.decide(0.89, ("v1", 0.903), 0.005, 40, PASSED).promoted


# --- promote: the compare-and-swap of the champion pointer, on a real local store ---------------------------------
def _published(store, tmp_path, *versions: str) -> None:
    for version in versions:
        folder = tmp_path / "local" / version
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text("{}")
        registry.publish_run(store, version, folder)


@pytest.fixture
def store(tmp_path):
    store = LocalStore(tmp_path / "artifacts")
    _published(store, tmp_path, "v1", "v2", "v3")
    return store


def _promote(store, candidate_auc, champion_auc, floor=PASSED, **kw):
    return promotion.promote(store, "v3", candidate_auc, floor=floor, tolerance=0.005, n_test=40,
                             champion_auc=champion_auc, **kw)


def _never(version):
    raise AssertionError(f"the champion {version} must not be scored")


def test_the_first_candidate_becomes_champion_without_scoring_anything(store):
    outcome = _promote(store, 0.8, _never)
    assert outcome == {"decision": "promoted", "reason": "no champion yet", "champion_before": None,
                       "champion_auc_on_same_test": None}
    assert registry.champion_version(store) == "v3"


def test_a_candidate_below_the_floor_leaves_the_champion_alone_unscored(store):
    registry.set_champion(store, "v1", reason="first")
    outcome = _promote(store, 0.99, _never, floor=FAILED)
    assert outcome == {"decision": "rejected", "reason": FAILED["reason"], "champion_before": "v1",
                       "champion_auc_on_same_test": None}
    assert registry.champion_version(store) == "v1"


def test_a_worse_candidate_is_rejected_against_the_rescored_champion(store):
    registry.set_champion(store, "v1", reason="first")
    outcome = _promote(store, 0.80, {"v1": 0.90}.__getitem__)
    assert outcome["decision"] == "rejected" and outcome["champion_before"] == "v1"
    assert outcome["champion_auc_on_same_test"] == 0.90 and "is worse than champion v1's" in outcome["reason"]
    assert registry.champion_version(store) == "v1"


@pytest.mark.parametrize(("v2_auc", "expected"), [(0.70, "promoted"), (0.95, "rejected")])
def test_the_loser_of_a_race_rereads_the_champion_and_decides_again(store, v2_auc, expected):
    """While this run scores champion v1, another run makes v2 champion: the conditional switch fails, and the
    decision is made again against v2 (which the candidate may beat or not)."""
    registry.set_champion(store, "v1", reason="first")
    scored, conflicts = [], []

    def champion_auc(version: str) -> float:
        scored.append(version)
        if version == "v1":  # a concurrent promotion lands while this run is deciding
            registry.set_champion(store, "v2", reason="the other run")
        return {"v1": 0.70, "v2": v2_auc}[version]

    outcome = _promote(store, 0.90, champion_auc, on_conflict=lambda: conflicts.append(1))
    assert scored == ["v1", "v2"] and len(conflicts) == 1
    assert outcome["decision"] == expected and outcome["champion_before"] == "v2"
    assert outcome["champion_auc_on_same_test"] == v2_auc
    pointer = registry.read_champion(store)
    champions = [h["version"] for h in pointer["history"]] + [pointer["version"]]
    assert champions == ["v1", "v2", "v3"][: 3 if expected == "promoted" else 2]  # no update was lost


def test_a_champion_that_keeps_changing_makes_the_run_give_up_untouched(store):
    registry.set_champion(store, "v1", reason="first")
    others = iter(["v2", "v1", "v2"])

    def champion_auc(version: str) -> float:
        registry.set_champion(store, next(others), reason="another run")
        return 0.5

    with pytest.raises(Conflict, match="kept changing"):
        _promote(store, 0.9, champion_auc, attempts=3)
    assert registry.champion_version(store) == "v2"
