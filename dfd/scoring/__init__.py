"""Batch scoring: scan a folder, stream it through the model, keep a ledger, write the results.

Everything goes through :func:`dfd.storage.open_store`, so the same code scores a local folder or an
``s3://bucket/prefix`` and writes its results to a local or S3 artifact store. The file names and row schema
are :mod:`dfd.layout`'s (``scores/<batch_id>/results.csv``, ``results.jsonl``, ``summary.json`` written last,
``ledger.jsonl`` and ``ledger/``). One module per job:

* :mod:`~dfd.scoring.ids`: batch ids and artifact keys;  :mod:`~dfd.scoring.scan`: what a folder holds;
* :mod:`~dfd.scoring.ledger`: what has been scored;  :mod:`~dfd.scoring.reader`: one file read and decoded
  (an :class:`Outcome` with a :class:`Status`);  :mod:`~dfd.scoring.stream`: the tf.data pipeline;
* :mod:`~dfd.scoring.results`: the results files;  :mod:`~dfd.scoring.report`: progress and summary text;
* :mod:`~dfd.scoring.folder`: :func:`score_folder`, the recipe;  :mod:`~dfd.scoring.predictor`: the model.
* :mod:`~dfd.scoring.shards`: the same recipe in shards on a Dask cluster (plan, score a shard, merge).

Idempotent and resumable: the ledger is keyed by (sha256, model_version); the next run reads it, scores only
what is missing and rebuilds the results from the ledger and a fresh scan (exactly one row per file present).
A file whose content changed is re-hashed and rescored. Files that could not be *read* (permissions, special
files, storage errors) are not recorded, so they are retried each run. If the input store itself fails (its
listing fails after read errors), the run fails and publishes nothing rather than a batch of "unreadable"
rows. Inputs are only ever read.
"""

from __future__ import annotations

from dfd.layout import (
    LEDGER_CHUNKS,
    LEDGER_FILE,
    RESULT_FIELDS,
    RESULTS_CSV,
    RESULTS_JSONL,
    SCORES,
    SUMMARY_JSON,
)
from dfd.scoring.errors import ScoringError, error_reason
from dfd.scoring.folder import ScoreOptions, score_folder
from dfd.scoring.ids import artifact_key, batch_id_for, results_prefix, slug
from dfd.scoring.ledger import Entry, Ledger
from dfd.scoring.predictor import load_predictor
from dfd.scoring.reader import Outcome, Status
from dfd.scoring.report import Progress, format_summary
from dfd.scoring.results import result_locations, result_row, write_results
from dfd.scoring.scan import Scan, check_source, scan_folder
from dfd.scoring.stream import stream_scores

__all__ = [
    "LEDGER_CHUNKS", "LEDGER_FILE", "RESULTS_CSV", "RESULTS_JSONL", "RESULT_FIELDS", "SCORES", "SUMMARY_JSON",
    "Entry", "Ledger", "Outcome", "Progress", "Scan", "ScoreOptions", "ScoringError", "Status", "artifact_key",
    "batch_id_for", "check_source", "error_reason", "format_summary", "load_predictor", "result_locations",
    "result_row", "results_prefix", "scan_folder", "score_folder", "slug", "stream_scores", "write_results",
]
