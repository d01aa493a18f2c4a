"""The artifact store's layout and the formats written into it: the one owner of every file name and schema.

Producers (the retrain tasks, the registry, the batch scorer) and consumers (the viewer's catalog, its
templates, the test fixtures) import these names, so a change of format is made here once and breaks a
test wherever the two sides disagree. Keys are relative to the artifact store (``ARTIFACTS_URL``)::

    champion.json                               the champion pointer (see dfd.registry)
    runs/<version>/model.keras, metadata.json   the model and its sidecar (see dfd.model)
    runs/<version>/metrics.json, test_scores.csv, history.json, config.json, run.json, split_manifest.csv,
                   quarantine.json, <plot>.png
    runs/<version>/_COMPLETE                    written last: the file list with sizes
    scores/<batch_id>/results.csv, results.jsonl, summary.json (written last), ledger.jsonl, ledger/
"""

from __future__ import annotations

from typing import Any

# --- registry and run files --------------------------------------------------------------------------------
RUNS = "runs"
CHAMPION = "champion.json"
COMPLETE = "_COMPLETE"
RUN_RECORD = "run.json"
MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.json"
TEST_SCORES_FILE = "test_scores.csv"
HISTORY_FILE = "history.json"
CONFIG_FILE = "config.json"
SPLIT_MANIFEST = "split_manifest.csv"
SYNTHETIC_MANIFEST = "synthetic_manifest.csv"  # augmented copies and synthetic fakes in use
QUARANTINE_FILE = "quarantine.json"

# --- plots: file stem -> title, in the order they are drawn and shown ------------------------------------------
PLOTS: dict[str, str] = {
    "acc": "Accuracy per epoch",
    "loss": "Loss per epoch",
    "auc": "AUC per epoch",
    "cm": "Confusion matrix",
    "roc": "ROC curve",
    "pr": "Precision-recall curve",
    "hist": "Score histogram",
    "reliability": "Reliability (calibration)",
}
PLOT_FILES = [f"{stem}.png" for stem in PLOTS]

# --- batch scoring results --------------------------------------------------------------------------------
SCORES = "scores"
RESULTS_CSV = "results.csv"
RESULTS_JSONL = "results.jsonl"
SUMMARY_JSON = "summary.json"
LEDGER_FILE = "ledger.jsonl"
LEDGER_CHUNKS = "ledger"

RESULT_FIELDS = (
    "path", "sha256", "bytes", "width", "height", "score", "label", "threshold", "model_version", "scored_at",
    "error",
)
INT_FIELDS = ("bytes", "width", "height")
SCORE_LABELS = ("real", "deepfake")  # what a scored file is called
ERROR_LABEL = "error"  # the count of files that could not be scored
RESULT_LABELS = (*SCORE_LABELS, ERROR_LABEL)

# Keys of summary.json that every reader may rely on (the scorer writes more).
SUMMARY_KEYS = ("files", "scored", "errors", "counts", "errors_by_reason", "batch_id", "source", "model_version",
                "threshold", "started_at", "finished_at", "duration_s", "files_per_s", "status", "results",
                "model_caveat")


def run_key(version: str, name: str = "") -> str:
    """The key of ``name`` inside run ``version`` (the run's folder when ``name`` is empty)."""
    return "/".join(p for p in (RUNS, version, name) if p)


def batch_key(batch_id: str, name: str = "") -> str:
    """The key of ``name`` inside batch ``batch_id``'s results (its folder when ``name`` is empty)."""
    return "/".join(p for p in (SCORES, batch_id, name) if p)


# --- the caveat on a model's verdicts -------------------------------------------------------------------------
# The metadata (and run.json) flags that say what a model was trained on; a run made before the metadata
# carried them has them in its run record only.
CAVEAT_FLAGS = ("demo_data", "reals_only")
TRAIN_ON_REAL_DATA = ("To train on real data: put real images in DIR/real/ and labelled deepfakes in DIR/df/, "
                      "then run `dfd-retrain --data DIR` (README, Retraining).")
CAVEATS = {
    "demo-data": "This model was trained on the synthetic demo data (make demo), not on real deepfakes: its "
                 "verdicts on real images mean nothing.",
    "synthetic-fakes-only": "This model was trained without labelled deepfakes (real images plus synthetic fakes "
                            "made from them): how well it catches real deepfakes has not been measured.",
}


def model_caveat(metadata: dict[str, Any] | None, run: dict[str, Any] | None = None) -> dict[str, str] | None:
    """The warning every verdict of a model carries, from its metadata sidecar: ``{"kind", "message",
    "hint"}`` for a model trained on the demo data (``demo-data``) or without labelled deepfakes
    (``synthetic-fakes-only``), ``None`` for one trained on real labelled data or when nothing says otherwise.
    ``run`` (its ``run.json``) answers for a flag the metadata lacks (models trained before it had them)."""
    metadata, run = metadata or {}, run or {}

    def flag(name: str) -> bool:
        return bool(metadata[name] if name in metadata else run.get(name))

    kind = "demo-data" if flag("demo_data") else "synthetic-fakes-only" if flag("reals_only") else None
    return None if kind is None else {"kind": kind, "message": CAVEATS[kind], "hint": TRAIN_ON_REAL_DATA}


def caveat_needs_run(metadata: dict[str, Any] | None) -> bool:
    """Whether the metadata lacks a flag :func:`model_caveat` reads, so that ``run.json`` must be read too."""
    return not all(k in (metadata or {}) for k in CAVEAT_FLAGS)


# --- the metrics table --------------------------------------------------------------------------------------
# (row name, path into one split of metrics.json, fallback path for old files)
METRIC_ROWS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Accuracy", ("at_threshold", "accuracy"), ("accuracy",)),
    ("Balanced accuracy", ("at_threshold", "balanced_accuracy"), ()),
    ("ROC AUC", ("roc_auc",), ()),
    ("Average precision (AP)", ("average_precision",), ()),
    ("Equal error rate (EER)", ("eer",), ()),
    ("Precision (deepfake)", ("at_threshold", "precision"), ()),
    ("Recall (deepfake)", ("at_threshold", "recall"), ()),
    ("F1", ("at_threshold", "f1"), ()),
    ("Accuracy on real images", ("at_threshold", "per_class_accuracy", "real"), ()),
    ("Accuracy on deepfakes", ("at_threshold", "per_class_accuracy", "deepfake"), ()),
    ("Accuracy at 0.5", ("at_0.5", "accuracy"), ()),
)


def _pick(node: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def metric_rows(metrics: dict[str, Any], fallback: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The metrics table of a run: one row per metric with ``name``, ``test`` and ``validation`` values
    (``None`` where a split lacks it; rows both lack are left out), validation AUC by number of views when
    evaluation compared them, then an ``Images`` count row.
    ``fallback`` (the model sidecar's metrics) stands in for a missing test split."""
    test = metrics.get("test") or (fallback or {}).get("test") or {}
    val = metrics.get("validation") or {}
    rows = []
    for name, path, alt in METRIC_ROWS:
        t = _pick(test, path)
        if t is None and alt:
            t = _pick(test, alt)
        v = _pick(val, path)
        if t is None and v is None:
            continue
        rows.append({"name": name, "test": t, "validation": v})
    for k, v in (metrics.get("views") or {}).get("validation_auc", {}).items():  # see dfd.evaluate.check_views
        rows.append({"name": f"ROC AUC with {k} view{'' if k == '1' else 's'}", "test": None, "validation": v})
    n_test, n_val = test.get("n"), val.get("n")
    if n_test is not None or n_val is not None:
        rows.append({"name": "Images", "test": n_test, "validation": n_val, "count": True})
    return rows
