"""Evaluate stage: scores from the *saved* model (so evaluation sees what scoring will see), the decision
threshold chosen on validation, temperature calibration, and every metric the product reports.

Threshold rule: the threshold that maximises balanced accuracy (the mean of the per-class accuracies) on
the validation split; among ties, the one closest to 0.5. It is never chosen on the test split.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

from dfd import promotion
from dfd.imageio import decode_image
from dfd.predict import Predictor
from dfd.preprocess import larger_than_crop
from dfd.storage import Store
from dfd.train import Entry

THRESHOLD_RULE = "maximum balanced accuracy on the validation split (ties: closest to 0.5)"
# Validation AUC that more views must add before they are worth their cost (5 views: 5x the model's work).
VIEWS_MARGIN = 0.005


def score_entries(predictor: Predictor, entries: Sequence[Entry], stores: Sequence[Store],
                  batch_size: int = 64, max_pixels: int = 40_000_000) -> np.ndarray:
    """Score stored images with a predictor, decoding in parallel threads while the model runs."""

    def load(e: Entry) -> np.ndarray:
        return decode_image(stores[e.store].read_bytes(e.key), max_pixels).pixels

    def pixels() -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(max_workers=4) as pool:
            yield from pool.map(load, entries)

    return predictor.score_pixels(pixels(), batch_size=batch_size)


def compare_views(y: np.ndarray, scores_by_views: dict[int, np.ndarray], scored: int,
                  margin: float = VIEWS_MARGIN) -> dict[str, Any]:
    """Validation AUC of one model scored with different numbers of views, and advice when a number other
    than the one it ``scored`` with is better by at least ``margin`` (the centre crop misses what the corners
    show: faces or traces off-centre in this data)."""
    aucs = {k: auc(y, np.nan_to_num(s, nan=0.5)) for k, s in sorted(scores_by_views.items())}
    best = max(aucs, key=lambda k: (aucs[k], -k))
    gain = aucs[best] - aucs[scored]
    advice = ""
    if best != scored and gain >= margin:
        advice = (f"scoring {best} views instead of {scored} raises validation AUC from {aucs[scored]:.4f} to "
                  f"{aucs[best]:.4f} (+{gain:.4f}) at {best / scored:g}x the work per image: retrain with "
                  f"DFD_EVAL_CROPS={best}")
    return {"scored": scored, "validation_auc": {str(k): v for k, v in aucs.items()}, "margin": margin,
            "advice": advice}


def check_views(predictor: Predictor, val: Sequence[Entry], raw_val: np.ndarray, stores: Sequence[Store],
                min_sides: Sequence[int], max_pixels: int = 40_000_000) -> dict[str, Any] | None:
    """When ``predictor`` scores fewer than 5 crops of images clearly larger than a crop, score validation
    again with the centre and four corners and compare (:func:`compare_views`): whether scoring fewer views
    (``DFD_EVAL_CROPS=1``, the fast mode) misses something in this data. None when there is nothing to compare."""
    spec = predictor.spec
    if spec.get("mode") != "crop" or predictor.views_per_image >= 5 or not larger_than_crop(
            list(min_sides), int(spec["size"])):
        return None
    five = Predictor(predictor.model, {**predictor.metadata, "input_spec": {**spec, "crops": 5}})
    raw_five = score_entries(five, val, stores, max_pixels=max_pixels)
    y = np.array([e.y for e in val])
    return compare_views(y, {predictor.views_per_image: raw_val, 5: raw_five}, predictor.views_per_image)


def choose_threshold(y: np.ndarray, s: np.ndarray) -> float:
    """The validation threshold that maximises balanced accuracy (see module docstring)."""
    y, s = np.asarray(y), np.asarray(s, dtype=np.float64)
    candidates = np.unique(np.concatenate([s, [0.5]]))
    pos, neg = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    best, best_t = -1.0, 0.5
    for t in candidates:
        pred = s >= t
        bal = 0.5 * ((pred & (y == 1)).sum() / pos + (~pred & (y == 0)).sum() / neg)
        if bal > best + 1e-12 or (abs(bal - best) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
            best, best_t = bal, float(t)
    return best_t


def fit_temperature(y: np.ndarray, s: np.ndarray) -> float:
    """Temperature T minimising validation log-loss of sigmoid(logit(s) / T); 1.0 means no change."""
    y = np.asarray(y, dtype=np.float64)
    logits = _logit(np.asarray(s, dtype=np.float64))
    if len(np.unique(y)) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        p = np.clip(1 / (1 + np.exp(-logits / np.exp(log_t))), 1e-7, 1 - 1e-7)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def apply_temperature(s: np.ndarray, temperature: float) -> np.ndarray:
    return 1 / (1 + np.exp(-_logit(np.asarray(s, dtype=np.float64)) / temperature))


def _logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, 1e-6, 1 - 1e-6)
    return np.log(s / (1 - s))


def equal_error_rate(y: np.ndarray, s: np.ndarray) -> float:
    """The error rate where the false-positive and false-negative rates are equal."""
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2)


def expected_calibration_error(y: np.ndarray, s: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width probability bins."""
    y, s = np.asarray(y), np.asarray(s)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - s[m].mean())
    return float(ece)


def at_threshold(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    """Decision metrics at one threshold."""
    y = np.asarray(y).astype(int)
    pred = (np.asarray(s) >= threshold).astype(int)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    real_acc = tn / (tn + fp) if tn + fp else 0.0
    fake_acc = tp / (tp + fn) if tp + fn else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = fake_acc
    return {
        "threshold": float(threshold),
        "accuracy": float((tp + tn) / max(len(y), 1)),
        "balanced_accuracy": float((real_acc + fake_acc) / 2),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(2 * precision * recall / (precision + recall)) if precision + recall else 0.0,
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "per_class_accuracy": {"real": float(real_acc), "deepfake": float(fake_acc)},
    }


def metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    """Threshold-free metrics plus decision metrics at ``threshold`` and at 0.5."""
    y = np.asarray(y).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "n": int(len(y)),
        "n_real": int((y == 0).sum()),
        "n_deepfake": int((y == 1).sum()),
        "roc_auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, s)) if both else float("nan"),
        "eer": equal_error_rate(y, s) if both else float("nan"),
        "ece": expected_calibration_error(y, s),
        "at_threshold": at_threshold(y, s, threshold),
        "at_0.5": at_threshold(y, s, 0.5),
    }


def auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s))


def auc_interval(y: np.ndarray, s: np.ndarray, groups: Sequence[Any] | None = None, *, level: float = 0.95,
                 n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for the ROC AUC, resampling whole ``groups`` (videos, near-duplicate
    sets) rather than images: frames of one video are not independent evidence, and an image-level bootstrap
    would make a model at chance look significant. Without groups every image is its own group.
    Returns (nan, nan) when one class is missing."""
    y = np.asarray(y).astype(int)
    s = np.asarray(s, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    _, gid = np.unique(np.asarray(groups if groups is not None else np.arange(len(y))).astype(str),
                       return_inverse=True)
    levels, lvl = np.unique(s, return_inverse=True)
    pos, neg = y == 1, y == 0
    rng = np.random.default_rng(seed)
    n_groups = int(gid.max()) + 1
    aucs = []
    for _ in range(n_boot):
        w = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups))[gid].astype(np.float64)
        w_pos, w_neg = w[pos].sum(), w[neg].sum()
        if w_pos == 0 or w_neg == 0:
            continue
        neg_at = np.bincount(lvl[neg], weights=w[neg], minlength=len(levels))
        below = np.cumsum(neg_at) - neg_at
        wins = (w[pos] * (below[lvl[pos]] + 0.5 * neg_at[lvl[pos]])).sum()
        aucs.append(wins / (w_pos * w_neg))
    if not aucs:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(aucs, [tail, 100 - tail])
    return float(lo), float(hi)


def split_auc_interval(entries: Sequence[Entry], scores: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """One split's AUC with its 95% group-bootstrap interval, as the quality floor reads it
    (``{"auc", "low", "high", "groups"}``); an entry with no group (-1) is a group of its own."""
    y = np.array([e.y for e in entries])
    groups = [e.group if e.group >= 0 else f"item{i}" for i, e in enumerate(entries)]
    low, high = auc_interval(y, scores, groups, seed=seed)
    return {"auc": auc(y, scores) if len(set(y.tolist())) == 2 else float("nan"),
            "low": low, "high": high, "groups": len(set(groups))}


@dataclass(frozen=True)
class Assessment:
    """A saved model measured on validation and test: calibration, threshold, metrics and the quality floor."""

    temperature: float
    threshold: float
    test_scores: np.ndarray  # calibrated, one per test entry
    test: dict[str, Any]
    validation: dict[str, Any]
    test_uncalibrated_ece: float
    quality_floor: dict[str, Any]


def assess(val: Sequence[Entry], raw_val: np.ndarray, test: Sequence[Entry], raw_test: np.ndarray, *, seed: int,
           min_auc: float) -> Assessment:
    """Calibrate on validation (temperature, then the threshold), measure both splits at that threshold and
    judge the quality floor (see :mod:`dfd.promotion`) from the ``raw_*`` model scores of ``val`` and ``test``.

    A diverged model outputs NaN; scored as 0.5 (no opinion) it is measured, and refused, like any dud."""
    raw_val, raw_test = (np.nan_to_num(raw, nan=0.5) for raw in (raw_val, raw_test))
    y_val, y_test = np.array([e.y for e in val]), np.array([e.y for e in test])
    temperature = fit_temperature(y_val, raw_val)
    s_val, s_test = apply_temperature(raw_val, temperature), apply_temperature(raw_test, temperature)
    threshold = choose_threshold(y_val, s_val)
    intervals = {name: split_auc_interval(entries, scores, seed)
                 for name, entries, scores in (("validation", val, s_val), ("test", test, s_test))}
    return Assessment(temperature=temperature, threshold=threshold, test_scores=s_test,
                      test=metrics(y_test, s_test, threshold), validation=metrics(y_val, s_val, threshold),
                      test_uncalibrated_ece=expected_calibration_error(y_test, raw_test),
                      quality_floor=promotion.quality_floor(intervals, min_auc))
