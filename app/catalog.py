"""Read-only access to what the flows published: runs, the champion and scored batches.

Everything goes through :func:`dfd.storage.open_store` and the read functions of :mod:`dfd.registry`, so the
viewer works the same on a local folder and on S3. Small reads are cached for ``refresh_seconds`` (new runs
and batches appear without a restart); a batch's results are parsed once per change of the results object
(its size and modification time) and then filtered, sorted and paged in memory.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dfd import csvsafe, registry
from dfd.layout import (
    CONFIG_FILE,
    ERROR_LABEL,
    INT_FIELDS,
    METADATA_FILE,
    METRICS_FILE,
    PLOT_FILES,
    PLOTS,
    RESULT_FIELDS,
    RESULT_LABELS,
    RESULTS_CSV,
    RESULTS_JSONL,
    RUNS,
    SCORE_LABELS,
    SCORES,
    SUMMARY_JSON,
    batch_key,
    model_caveat,
    run_key,
)
from dfd.storage import NotFound, ObjectInfo, StorageError, Store, clean_key

# Names a run or batch folder may have: no separators, no leading dot.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
# Objects the viewer serves as files, by extension, with their content type.
SERVABLE = {
    ".png": "image/png",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".jsonl": "application/x-ndjson",
    ".txt": "text/plain; charset=utf-8",
}
SORTS = ("file", "score_desc", "score_asc")
# The results file of each kind the viewer reads, in order of preference.
RESULTS_FILES = {"jsonl": RESULTS_JSONL, "csv": RESULTS_CSV}
LABEL_CODES = {name: i for i, name in enumerate(RESULT_LABELS)}  # a row's label -> its code in a ResultTable
ERROR_CODE = LABEL_CODES[ERROR_LABEL]


class Rescoring(Exception):
    """The results file does not match the summary that describes it: the batch is being scored again (the
    scorer withdraws ``summary.json``, rewrites the results, then writes the new summary last)."""


def safe_name(name: str) -> str:
    """``name`` if it can be a run version or batch id, else :class:`dfd.storage.NotFound` (a 404)."""
    if not SAFE_NAME.match(name or "") or ".." in name:
        raise NotFound(f"no such item {name!r}")
    return name


class TTLCache:
    """A tiny thread-safe cache whose entries expire after ``ttl`` seconds (0 = never reuse)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._data: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, load: Callable[[], Any]) -> Any:
        if self.ttl > 0:
            now = time.monotonic()
            with self._lock:
                hit = self._data.get(key)
            if hit is not None and now - hit[0] < self.ttl:
                return hit[1]
        value = load()
        if self.ttl > 0:
            with self._lock:
                if len(self._data) > 4096:
                    self._data.clear()
                self._data[key] = (time.monotonic(), value)
        return value


@dataclass
class ResultTable:
    """One batch's result rows as columns, with precomputed orders for fast filter/sort/page."""

    signature: tuple[str, int, float]
    columns: dict[str, list[Any]]
    scores: np.ndarray  # float64, NaN where the row has no score
    label_codes: np.ndarray  # index into RESULT_LABELS: 0 real, 1 deepfake, 2 error
    sha256: str = ""  # of the results file these rows were parsed from
    _orders: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        return len(self.scores)

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.label_codes, minlength=len(RESULT_LABELS))
        return {name: int(found[i]) for i, name in enumerate(RESULT_LABELS)}

    def order(self, label: str = "", sort: str = "file") -> np.ndarray:
        """Row indices for a label filter ('' = all) in a sort order, computed once and reused."""
        key = (label if label in RESULT_LABELS else "", sort if sort in SORTS else "file")
        with self._lock:
            cached = self._orders.get(key)
        if cached is not None:
            return cached
        idx = np.arange(len(self.scores))
        if key[0]:
            idx = idx[self.label_codes == LABEL_CODES[key[0]]]
        if key[1] != "file":
            s = self.scores[idx]
            # Rows without a score go last in both directions; ties keep file order (stable sort).
            s = np.where(np.isnan(s), np.inf, -s if key[1] == "score_desc" else s)
            idx = idx[np.argsort(s, kind="stable")]
        idx.setflags(write=False)
        with self._lock:
            self._orders[key] = idx
        return idx

    def row(self, i: int) -> dict[str, Any]:
        row = {name: col[i] for name, col in self.columns.items()}
        row["index"] = int(i)
        return row

    def rows(self, indices: np.ndarray) -> list[dict[str, Any]]:
        return [self.row(int(i)) for i in indices]


def parse_results(data: bytes, kind: str) -> tuple[dict[str, list[Any]], np.ndarray, np.ndarray]:
    """Parse ``results.jsonl`` or ``results.csv`` bytes into columns, scores and label codes."""
    if kind == "jsonl":
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        try:
            records = json.loads("[" + ",".join(lines) + "]")
        except json.JSONDecodeError:  # one bad line: parse line by line and skip it
            records = []
            for line in lines:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    else:
        records = [csvsafe.restore_row(r) for r in csv.DictReader(io.StringIO(data.decode("utf-8")))]
    interned: dict[str, str] = {}
    columns: dict[str, list[Any]] = {name: [] for name in RESULT_FIELDS}
    scores = np.full(len(records), np.nan)
    codes = np.full(len(records), ERROR_CODE, dtype=np.int8)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            rec = {}
        score = _as_float(rec.get("score"))
        for name in RESULT_FIELDS:
            value = rec.get(name, "")
            if name == "score":
                value = score
            elif name in INT_FIELDS:
                value = _as_int(value)
            elif name == "threshold":
                value = _as_float(value)
            elif value is None:
                value = ""
            elif isinstance(value, str) and name in ("model_version", "label", "error", "scored_at"):
                value = interned.setdefault(value, value)
            columns[name].append(value)
        label = str(rec.get("label") or "")
        if rec.get("error") or label not in SCORE_LABELS or score is None:
            codes[i] = ERROR_CODE
            columns["label"][i] = ""
        else:
            codes[i] = LABEL_CODES[label]
            scores[i] = score
    return columns, scores, codes


def _as_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        f = _as_float(value)
        return int(f) if f is not None else None


def _as_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else f


class Catalog:
    """The viewer's view of the artifact store."""

    def __init__(self, store: Store, refresh_seconds: float = 2.0, table_entries: int = 4):
        self.store = store
        self._cache = TTLCache(refresh_seconds)
        self._tables: OrderedDict[str, ResultTable] = OrderedDict()
        self._table_entries = max(1, table_entries)
        self._tables_lock = threading.Lock()
        self._parse_locks: dict[str, threading.Lock] = {}

    # --- small cached reads ---------------------------------------------------------------------------
    def _json(self, key: str) -> Any | None:
        def load() -> Any | None:
            try:
                return self.store.read_json(key)
            except NotFound:
                return None
            except StorageError:
                return None

        return self._cache.get(("json", key), load)

    # --- champion and runs ----------------------------------------------------------------------------
    def champion_pointer(self) -> dict[str, Any] | None:
        return self._cache.get(("champion",), lambda: registry.read_champion(self.store))

    def champion_version(self) -> str | None:
        pointer = self.champion_pointer()
        return pointer.get("version") if pointer else None

    def versions(self) -> list[str]:
        return self._cache.get(("versions",), lambda: registry.list_versions(self.store))

    def run_summary(self, version: str) -> dict[str, Any]:
        """The run record (``run.json``) merged by :func:`dfd.registry.read_run`; 404 when unknown."""
        safe_name(version)

        def load() -> dict[str, Any] | None:
            try:
                return registry.read_run(self.store, version)
            except (registry.RegistryError, StorageError):
                return None

        run = self._cache.get(("run", version), load)
        if run is None:
            raise NotFound(f"unknown run {version!r}")
        return run

    def runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Run summaries, newest first, each with ``is_champion``."""
        champ = self.champion_version()
        out = []
        for version in self.versions()[:limit]:
            try:
                run = dict(self.run_summary(version))
            except NotFound:
                continue
            run["is_champion"] = version == champ
            out.append(run)
        return out

    def run_files(self, version: str) -> dict[str, ObjectInfo]:
        safe_name(version)
        return self._cache.get(
            ("files", version),
            lambda: {o.key.rsplit("/", 1)[-1]: o for o in self.store.list(run_key(version))},
        )

    def run_detail(self, version: str) -> dict[str, Any]:
        """Everything a run page shows: record, metrics, metadata, configuration and its plots."""
        run = self.run_summary(version)
        files = self.run_files(version)
        metadata = self._json(run_key(version, METADATA_FILE)) or {}
        listed = run.get("plots") or PLOT_FILES
        plots = []
        for name in listed:
            name = str(name).rsplit("/", 1)[-1]
            stem = name[:-4] if name.endswith(".png") else name
            if f"{stem}.png" in files:
                key = run_key(version, f"{stem}.png")
                plots.append({"name": stem, "title": PLOTS.get(stem, stem), "key": key})
        return {
            "version": version,
            "run": run,
            "metrics": self._json(run_key(version, METRICS_FILE)) or {},
            "metadata": {k: v for k, v in metadata.items() if k != "metrics"},
            "metadata_metrics": metadata.get("metrics") if isinstance(metadata.get("metrics"), dict) else {},
            "config": self._json(run_key(version, CONFIG_FILE)) or {},
            "plots": plots,
            "files": sorted(files),
            "is_champion": version == self.champion_version(),
            "caveat": model_caveat(metadata if isinstance(metadata, dict) else None, run),
        }

    def model_caveat(self, version: Any) -> dict[str, str] | None:
        """The caveat on the verdicts of model ``version`` (:func:`dfd.layout.model_caveat`: demo data,
        synthetic fakes only), from its metadata and run record; ``None`` when there is none or no such run."""
        if not isinstance(version, str) or not SAFE_NAME.match(version):
            return None
        try:
            run = self.run_summary(version)
        except NotFound:
            return None
        metadata = self._json(run_key(version, METADATA_FILE))
        return model_caveat(metadata if isinstance(metadata, dict) else None, run)

    # --- batches --------------------------------------------------------------------------------------
    def batch_ids(self) -> list[str]:
        def load() -> list[str]:
            ids = [d for d in self.store.list_dirs(SCORES) if SAFE_NAME.match(d)]
            return [d for d in ids if self.store.exists(batch_key(d, SUMMARY_JSON))]

        return self._cache.get(("batches",), load)

    def batch_summary(self, batch_id: str) -> dict[str, Any]:
        safe_name(batch_id)
        summary = self._json(batch_key(batch_id, SUMMARY_JSON))
        if not isinstance(summary, dict):
            raise NotFound(f"unknown batch {batch_id!r}")
        summary = dict(summary)
        summary.setdefault("batch_id", batch_id)
        if "model_caveat" not in summary:  # scored before summaries carried it: ask the model, if still there
            summary["model_caveat"] = self.model_caveat(summary.get("model_version"))
        return summary

    def batches(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Batch summaries, most recently finished first."""
        out = []
        for batch_id in self.batch_ids():
            try:
                out.append(self.batch_summary(batch_id))
            except NotFound:
                continue
        out.sort(key=lambda s: (str(s.get("finished_at") or s.get("started_at") or ""), s["batch_id"]), reverse=True)
        return out[:limit]

    def _results_key(self, batch_id: str, summary: dict[str, Any]) -> tuple[str, str]:
        """The results object to read (JSON lines preferred, then CSV), kept inside ``scores/<id>/``."""
        folder = batch_key(batch_id)
        declared = summary.get("results") if isinstance(summary.get("results"), dict) else {}
        for kind, default in RESULTS_FILES.items():
            candidates = []
            if declared.get(kind):
                name = str(declared[kind])
                candidates.append(name if "/" in name else batch_key(batch_id, name))
            candidates.append(batch_key(batch_id, default))
            for key in candidates:
                try:
                    key = clean_key(key)
                except StorageError:
                    continue
                if key.startswith(folder + "/") and self.store.exists(key):
                    return key, kind
        raise NotFound(f"batch {batch_id!r} has no results file")

    def results(self, batch_id: str) -> ResultTable:
        """The batch's parsed results, re-parsed only when the results object changed. Raises
        :class:`Rescoring` when the file is not the one its summary describes (``results_sha256``; summaries
        written before it had none are trusted)."""
        summary = self.batch_summary(batch_id)
        key, kind = self._cache.get(("results-key", batch_id), lambda: self._results_key(batch_id, summary))
        info = self._cache.get(("stat", key), lambda: self.store.stat(key))
        signature = (key, info.size, info.mtime)
        digests = summary.get("results_sha256")
        expected = str(digests.get(kind) or "") if isinstance(digests, dict) else ""

        def checked(table: ResultTable) -> ResultTable:
            if expected and table.sha256 != expected:
                raise Rescoring(f"batch {batch_id!r} is being scored again; its results will be back in a moment")
            return table

        with self._tables_lock:
            table = self._tables.get(batch_id)
            if table is not None and table.signature == signature:
                self._tables.move_to_end(batch_id)
                return checked(table)
            lock = self._parse_locks.setdefault(batch_id, threading.Lock())
        with lock:  # one parse per batch at a time; others wait for it
            with self._tables_lock:
                table = self._tables.get(batch_id)
                if table is not None and table.signature == signature:
                    return checked(table)
            data = self.store.read_bytes(key)
            columns, scores, codes = parse_results(data, kind)
            table = ResultTable(signature, columns, scores, codes, hashlib.sha256(data).hexdigest())
            checked(table)
            with self._tables_lock:
                self._tables[batch_id] = table
                self._tables.move_to_end(batch_id)
                while len(self._tables) > self._table_entries:
                    self._tables.popitem(last=False)
            return table

    # --- files ----------------------------------------------------------------------------------------
    def servable(self, key: str) -> tuple[str, str]:
        """The cleaned key and content type of a file that may be served, else :class:`dfd.storage.NotFound`.

        Only objects under ``runs/`` or ``scores/`` with a known extension, no hidden name and inside the
        store (the local backend refuses symlinks that leave its root) are served.
        """
        try:
            key = clean_key(key)
        except StorageError:
            raise NotFound("no such file") from None
        parts = key.split("/")
        if len(parts) < 3 or parts[0] not in (RUNS, SCORES):
            raise NotFound("no such file")
        if any(p.startswith(".") for p in parts) or not all(SAFE_NAME.match(p) for p in parts[:2]):
            raise NotFound("no such file")
        ext = "." + parts[-1].rsplit(".", 1)[-1].lower() if "." in parts[-1] else ""
        if ext not in SERVABLE:
            raise NotFound("no such file")
        if not self.store.exists(key):
            raise NotFound("no such file")
        return key, SERVABLE[ext]

    def read(self, key: str) -> bytes:
        try:
            return self.store.read_bytes(key)
        except StorageError:
            raise NotFound("no such file") from None


def iter_csv(table: ResultTable, indices: np.ndarray) -> Iterator[str]:
    """CSV text (header first) for the given rows, in chunks; text that a spreadsheet would run as a formula
    gets a leading quote (:mod:`dfd.csvsafe`)."""
    buf = io.StringIO()
    writer = csvsafe.Writer(buf)
    writer.writerow(RESULT_FIELDS)
    cols = [table.columns[name] for name in RESULT_FIELDS]
    for n, i in enumerate(indices):
        writer.writerow([col[int(i)] for col in cols])
        if n % 2000 == 1999:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
