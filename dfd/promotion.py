"""The promotion rule: a quality floor every candidate must clear, then the comparison with the champion.

Quality floor: a model whose AUC is not *clearly* above chance is never promoted, with or without a champion.
"Clearly" means the lower end of a 95% bootstrap interval (resampling whole groups, so that 50 frames of
one video count as one piece of evidence, see :func:`dfd.evaluate.auc_interval`) is above ``min_auc``
(``DFD_MIN_AUC``, default 0.55), on the validation split *and* on the held-out test split. Validation alone
flatters: early stopping picked the epoch that scored best on it. ``min_auc = 0`` turns the floor off (for
plumbing tests on data too small to show anything; never for production).

Champion comparison: the candidate wins when its test AUC is at least the champion's, re-scored on the same
test images, minus ``promotion_tolerance`` (:func:`decide`).

The switch of the champion pointer is a compare-and-swap (:func:`promote`): it succeeds only if the champion
is still the one the decision was made against; if another run promoted meanwhile, the loser re-reads the
champion, re-scores it and decides again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from dfd import registry
from dfd.storage import Conflict, Store

NO_SIGNAL = "no better than chance"


def quality_floor(intervals: dict[str, dict[str, Any]], min_auc: float) -> dict[str, Any]:
    """The floor's verdict from per-split AUC intervals ``{"validation": {"auc", "low", "high", "groups"},
    "test": {...}}``: ``{"passed", "min_auc", "reason", "splits"}``; the reason says which split fell short
    and by how much."""
    if min_auc <= 0:
        return {"passed": True, "min_auc": min_auc, "reason": "quality floor off (DFD_MIN_AUC=0)",
                "splits": intervals}
    short = []
    for split, iv in intervals.items():
        low = iv.get("low", float("nan"))
        if not math.isfinite(low) or low <= min_auc:
            short.append(f"{split} AUC {iv.get('auc', float('nan')):.3f} (95% interval {low:.3f}-"
                         f"{iv.get('high', float('nan')):.3f} over {iv.get('groups', 0)} groups)")
    if short:
        reason = (f"{NO_SIGNAL}: " + "; ".join(short) + f" does not clear the quality floor: its lower bound "
                  f"must be above {min_auc:.2f} (DFD_MIN_AUC)")
    else:
        lows = ", ".join(f"{split} {iv['low']:.3f}" for split, iv in intervals.items())
        reason = f"AUC lower bounds ({lows}) are above the quality floor {min_auc:.2f}"
    return {"passed": not short, "min_auc": min_auc, "reason": reason, "splits": intervals}


def versus_champion(candidate_auc: float, champion: str, champion_auc: float, tolerance: float,
                    n_test: int) -> tuple[bool, str]:
    """Whether the candidate may replace ``champion``, and why (both scored on the same ``n_test`` images)."""
    promoted = candidate_auc >= champion_auc - tolerance
    verb = "not worse than" if promoted else "worse than"
    return promoted, (f"test AUC {candidate_auc:.4f} is {verb} champion {champion}'s {champion_auc:.4f} "
                      f"on the same {n_test} test images (tolerance {tolerance})")


class Decision(NamedTuple):
    """Whether the candidate becomes champion, and why."""

    promoted: bool
    reason: str

    @property
    def label(self) -> str:
        """``promoted`` or ``rejected``, as the run record says it."""
        return "promoted" if self.promoted else "rejected"


def decide(candidate_auc: float, champion: tuple[str, float] | None, tolerance: float, n_test: int,
           floor: dict[str, Any]) -> Decision:
    """The promotion rule: a candidate below the quality ``floor`` (:func:`quality_floor`'s verdict) is
    rejected; otherwise it wins when there is no champion, or when its test AUC is not worse than
    ``champion = (version, AUC on the same n_test test images)`` by more than ``tolerance``."""
    if not floor["passed"]:
        return Decision(False, floor["reason"])
    if champion is None:
        return Decision(True, "no champion yet")
    return Decision(*versus_champion(candidate_auc, champion[0], champion[1], tolerance, n_test))


def promote(store: Store, candidate: str, candidate_auc: float, *, floor: dict[str, Any], tolerance: float,
            n_test: int, champion_auc: Callable[[str], float], attempts: int = 3,
            on_conflict: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Decide on ``candidate`` against the champion of ``store`` and, if it wins, make it champion.

    ``champion_auc(version)`` scores a champion on the candidate's test images (only called when the floor is
    cleared). The pointer switch is conditional on the champion read before deciding; when another promotion
    won the race (:class:`dfd.storage.Conflict`), ``on_conflict`` is called and the decision is made again
    against the new champion, at most ``attempts`` times. Returns the run record's decision fields."""
    for _ in range(attempts):
        champion = registry.champion_version(store)
        auc = champion_auc(champion) if champion is not None and floor["passed"] else None
        decision = decide(candidate_auc, None if auc is None else (champion, auc), tolerance, n_test, floor)
        outcome = {"decision": decision.label, "reason": decision.reason, "champion_before": champion,
                   "champion_auc_on_same_test": auc}
        if not decision.promoted:
            return outcome
        try:
            registry.set_champion(store, candidate, reason=decision.reason, expected=champion)
            return outcome
        except Conflict:
            on_conflict()
    raise Conflict("the champion kept changing; giving up (the champion is untouched by this run)")
