"""What a retrain run writes about itself: the model's metadata sidecar, the hyper-parameters and the key of the
resumable work folder, ``metrics.json``, ``test_scores.csv``, ``config.json`` and the run record (``run.json``).

Pure builders (plus two small readers, :func:`read_test_scores` and :func:`last_successful_run`), so that the
Prefect tasks only wire them to files and each format is built, and tested, in one place. File names come
from :mod:`dfd.layout`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfd import registry, synthfake
from dfd.csvsafe import Writer
from dfd.layout import SCORE_LABELS
from dfd.settings import Settings
from dfd.storage import Store

if TYPE_CHECKING:
    from dfd.evaluate import Assessment
    from dfd.train import Entry

S = dict[str, Any]

# Always in the hyper-parameters (and so in the training key and the metadata).
HYPERPARAMETERS = ("arch", "epochs", "batch_size", "learning_rate", "width", "seed", "augment_per_image", "patience")
# Off by default: they join only when used, so that the keys of runs made before they existed still hold.
OPTIONAL_HYPERPARAMETERS = ("robust_aug", "scale_aug", "synthetic_fakes", "weights_path", "lr_plateau_patience")
TEST_SCORES_HEADER = ("key", "y", "score")


def hyperparameters(settings: Settings) -> S:
    """The settings that shape training, as recorded in the metadata and hashed into the training key."""
    config = {k: getattr(settings, k) for k in HYPERPARAMETERS}
    config.update({k: getattr(settings, k) for k in OPTIONAL_HYPERPARAMETERS if getattr(settings, k)})
    if settings.synthetic_fakes:
        config["synthetic_version"] = synthfake.VERSION
    return config


def training_key(fingerprint: str, config: S) -> str:
    """A key for the resumable work folder: same data and same settings resume the same training."""
    blob = json.dumps({"fp": fingerprint, **config}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def model_metadata(settings: Settings, validated: S, spec: S, config: S, training: S, *, versions: S,
                   git_revision: str, created_at: str) -> S:
    """The metadata sidecar of a freshly trained model (threshold and temperature are neutral until
    :func:`calibrated_metadata`)."""
    return {
        "version": validated["version"],
        "arch": settings.arch,
        "input_spec": spec,
        "threshold": 0.5,
        "temperature": 1.0,
        "class_names": list(SCORE_LABELS),
        "data_fingerprint": validated["fingerprint"],
        "data_counts": validated["counts"],
        "demo_data": bool(validated.get("demo_data")),  # these two say what the verdicts are worth
        "reals_only": bool(validated.get("reals_only")),  # (dfd.layout.model_caveat)
        "hyperparameters": config,
        "max_image_pixels": settings.max_image_pixels,
        "versions": versions,
        "git_revision": git_revision,
        "created_at": created_at,
        "training": training,
    }


def utc_stamp(seconds: float | None = None) -> str:
    """``2024-05-01T12:00:00Z``: the metadata's time stamp format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def git_revision() -> str:
    """The checkout's commit, or ``unknown`` (no git, not a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def headline(m: S) -> S:
    """The few metrics of one split that the metadata sidecar carries (from a split of ``metrics.json``)."""
    return {"roc_auc": m["roc_auc"], "average_precision": m["average_precision"], "eer": m["eer"],
            "ece": m["ece"], "accuracy": m["at_threshold"]["accuracy"],
            "per_class_accuracy": m["at_threshold"]["per_class_accuracy"], "n": m["n"]}


def calibrated_metadata(metadata: S, metrics: S) -> S:
    """``metadata`` with the evaluated threshold, temperature and headline metrics (``metrics.json``)."""
    return {**metadata, "threshold": metrics["threshold"], "temperature": metrics["temperature"],
            "metrics": {"test": headline(metrics["test"]), "validation": headline(metrics["validation"])}}


def metrics_record(assessment: Assessment, *, reals_only: bool, training: S) -> S:
    """The body of ``metrics.json``: the assessment plus where the test fakes came from and how training went."""
    from dfd.evaluate import THRESHOLD_RULE

    a = assessment
    return {
        "threshold": a.threshold,
        "threshold_rule": THRESHOLD_RULE,
        "temperature": a.temperature,
        "test": a.test,
        "validation": a.validation,
        "test_uncalibrated_ece": a.test_uncalibrated_ece,
        "test_fakes": "synthetic (made from the test reals; df/ was empty)" if reals_only else "real (df/)",
        "quality_floor": a.quality_floor,
        "training": {k: training[k] for k in ("attempts", "no_signal", "epochs_run", "distribution") if k in training},
    }


def test_scores_csv(entries: Sequence[Entry], scores: Sequence[float]) -> str:
    """``test_scores.csv``: one row per test image with its key, true class and calibrated score (write it
    with ``newline=""``)."""
    fh = io.StringIO(newline="")
    writer = Writer(fh)
    writer.writerow(TEST_SCORES_HEADER)
    writer.writerows((e.key, e.y, f"{v:.6f}") for e, v in zip(entries, scores, strict=True))
    return fh.getvalue()


def read_test_scores(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The true classes and scores of a ``test_scores.csv``."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([int(r["y"]) for r in rows]), np.array([float(r["score"]) for r in rows])


def config_json(settings: Settings, force: bool) -> str:
    """``config.json``: the run's settings without secrets, plus whether it was forced."""
    return json.dumps({**settings.public_dict(), "force": force}, indent=2)


def changed_settings(previous: S | None, current: S) -> list[str]:
    """``name old -> new`` for each model setting that differs from the previous run's (a run recorded before
    settings were kept counts as unchanged: nothing can be compared)."""
    if not previous:
        return []
    return [f"{k} {previous[k]} -> {current[k]}" for k in sorted(current)
            if k in previous and previous[k] != current[k]]


def last_successful_run(store: Store) -> S | None:
    """The record of the newest run that finished training (promoted or rejected), if any."""
    for version in registry.list_versions(store):
        run = registry.read_run(store, version)
        if run.get("decision") in ("promoted", "rejected"):
            return run
    return None


def unchanged_result(fingerprint: str) -> S:
    """What the flow returns when data and model settings equal the last successful run's."""
    return {"decision": "unchanged", "data_fingerprint": fingerprint, "version": None,
            "reason": "data fingerprint and model settings unchanged since the last successful run"}


def run_record(settings: Settings, *, started_at: str, finished_at: str, validated: S, synthetic: S, trained: S,
               evaluated: S, plots: list[str], where: str, decision: S) -> S:
    """``run.json``: what the run used, measured and decided, from the outputs of the retrain tasks."""
    return {
        "version": validated["version"],
        "started_at": started_at,
        "finished_at": finished_at,
        "data_url": settings.data_url,
        "data_fingerprint": validated["fingerprint"],
        "data_counts": {**validated["counts"], "quarantined": validated["quarantined"],
                        "synthetic": synthetic["count"], "groups": validated["groups_per_split"]},
        "arch": settings.arch,
        "model_settings": settings.model_settings(),
        "test_auc": evaluated["test_auc"],
        "test_ap": evaluated["test_ap"],
        "test_accuracy": evaluated["test_accuracy"],
        "threshold": evaluated["threshold"],
        "temperature": evaluated["temperature"],
        "epochs_run": trained["epochs_run"],
        "train_seconds": trained["train_seconds"],
        "train_attempts": len(trained["attempts"]),
        "no_signal": trained["no_signal"],
        "quality_floor_passed": evaluated["floor_passed"],
        "demo_data": validated["demo_data"],
        "reals_only": validated.get("reals_only", False),
        "plots": plots,
        "where": where,
        **decision,
    }
