"""The results writer: ``results.csv`` and ``results.jsonl`` (one row per file, columns ``RESULT_FIELDS`` of
:mod:`dfd.layout`, sorted by path), the counts that open ``summary.json``, and the locations it lists.

Row fields: ``path`` (the store key: relative, POSIX; a name that is not UTF-8 has each such byte written
``\\xNN``, see :mod:`dfd.storage`), ``sha256``, ``bytes``, ``width`` and ``height`` (as stored, before EXIF
rotation), ``score`` (calibrated P(deepfake)), ``label`` (``real`` or ``deepfake``), ``threshold``,
``model_version``, ``scored_at`` (UTC ISO 8601), ``error``. A file that could not be scored has an empty
score and label, and ``error`` holds a short reason (``truncated: ...``, ``not an image: ...``,
``unreadable: ...``); the text before the first colon is the reason group counted in the summary.
In ``results.csv`` a text cell that a spreadsheet would run as a formula (it starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return) or that starts with a single quote gets a leading single quote
(:mod:`dfd.csvsafe`); ``results.jsonl`` and the ledger hold the text unchanged.

The counts returned here open ``summary.json``, with ``results_sha256`` (``{"csv": ..., "jsonl": ...}``, the
sha256 of the files as uploaded): a reader can check that the results files are the ones the summary describes.
:func:`dfd.scoring.folder.finish_batch` withdraws ``summary.json`` before these files are replaced and writes it
after them, so a listed batch never shows results of one run beside the summary of another.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from dfd import csvsafe
from dfd.layout import ERROR_LABEL, RESULT_FIELDS, RESULT_LABELS, RESULTS_CSV, RESULTS_JSONL, SCORE_LABELS, SUMMARY_JSON
from dfd.scoring.errors import error_reason
from dfd.scoring.ledger import Ledger, utc_now
from dfd.storage import ObjectInfo, Store, join
from dfd.storage.files import file_sha256


def write_results(
    art: Store,
    prefix: str,
    items: list[ObjectInfo],
    sha_of: dict[str, str],
    ledger: Ledger,
    read_errors: dict[str, str],
    *,
    threshold: float,
    model_version: str,
) -> dict[str, Any]:
    """Write results.csv and results.jsonl (one row per item, via local temp files and atomic uploads);
    returns the counts of the summary (``files``, ``scored``, ``errors``, ``counts``, ``errors_by_reason``) and
    ``results_sha256``."""
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="dfd-results-") as tmp:
        csv_path, jsonl_path = Path(tmp) / RESULTS_CSV, Path(tmp) / RESULTS_JSONL
        with csv_path.open("w", newline="", encoding="utf-8") as fc, jsonl_path.open("w", encoding="utf-8") as fj:
            writer = csvsafe.DictWriter(fc, fieldnames=RESULT_FIELDS, lineterminator="\n")
            writer.writeheader()
            for obj in items:
                row = result_row(obj, sha_of.get(obj.key), ledger, read_errors.get(obj.key), threshold, model_version)
                if row["error"]:
                    reasons[error_reason(row["error"])] += 1
                    counts[ERROR_LABEL] += 1
                else:
                    counts[row["label"]] += 1
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
                fj.write(json.dumps(row, ensure_ascii=False) + "\n")
        digests = {"csv": file_sha256(csv_path), "jsonl": file_sha256(jsonl_path)}
        art.upload_file(csv_path, join(prefix, RESULTS_CSV))
        art.upload_file(jsonl_path, join(prefix, RESULTS_JSONL))
    return {
        "files": len(items),
        "scored": sum(counts[label] for label in SCORE_LABELS),
        "errors": counts[ERROR_LABEL],
        "counts": {label: counts[label] for label in RESULT_LABELS},
        "errors_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "results_sha256": digests,
    }


def result_row(
    obj: ObjectInfo,
    sha: str | None,
    ledger: Ledger,
    read_error: str | None,
    threshold: float,
    model_version: str,
) -> dict[str, Any]:
    """The row of one file: from its ledger entry, or an error row when it was not read or not scored."""
    row: dict[str, Any] = {
        "path": obj.key,
        "sha256": sha or "",
        "bytes": obj.size if obj.size >= 0 else None,
        "width": None,
        "height": None,
        "score": None,
        "label": "",
        "threshold": threshold,
        "model_version": model_version,
        "scored_at": utc_now(),
        "error": "",
    }
    entry = ledger.entries.get(sha) if sha else None
    if read_error is not None or entry is None:
        row["error"] = read_error or "not scored: internal error, rerun the batch"
        return row
    row.update(width=entry.width, height=entry.height, scored_at=entry.scored_at, error=entry.error)
    if entry.score is not None and not entry.error:
        row["score"] = round(float(entry.score), 6)
        row["label"] = SCORE_LABELS[int(entry.score >= threshold)]  # (real, deepfake)
    return row


def result_locations(art: Store, prefix: str) -> dict[str, str]:
    """Where a batch's results are, for people: the ``results`` entry of ``summary.json``."""
    return {
        "folder": art.describe(prefix),
        "csv": art.describe(join(prefix, RESULTS_CSV)),
        "jsonl": art.describe(join(prefix, RESULTS_JSONL)),
        "summary": art.describe(join(prefix, SUMMARY_JSON)),
    }
