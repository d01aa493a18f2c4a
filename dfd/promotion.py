"""The promotion rule: a quality floor every candidate must clear, then the comparison with the champion.

Quality floor: a model whose AUC is not *clearly* above chance is never promoted, with or without a champion.
"Clearly" means the lower end of a 95% bootstrap interval (resampling whole groups, so that 50 frames of
one video count as one piece of evidence, see :func:`dfd.evaluate.auc_interval`) is above ``min_auc``
(``DFD_MIN_AUC``, default 0.55), on the validation split *and* on the held-out test split. Validation alone
flatters: early stopping picked the epoch that scored best on it. ``min_auc = 0`` turns the floor off (for
plumbing tests on data too small to show anything; never for production).

Champion comparison: the candidate wins when its test AUC is at least the champion's, re-scored on the same
test images, minus ``promotion_tolerance``.
"""

from __future__ import annotations

import math
from typing import Any

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
