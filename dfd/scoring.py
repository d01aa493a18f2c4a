"""Batch scoring core: scan a folder, stream it through the model, keep a ledger, write the results.

Everything goes through :func:`dfd.storage.open_store`, so the same code scores a local folder or an
``s3://bucket/prefix`` and writes its results to a local or S3 artifact store.

Results layout (keys relative to the artifact store)::

    scores/<batch_id>/results.csv       one row per input file, columns RESULT_FIELDS, sorted by path
    scores/<batch_id>/results.jsonl     the same rows as JSON Lines
    scores/<batch_id>/summary.json      counts per label, errors per reason, locations, timings (written last)
    scores/<batch_id>/ledger.jsonl      compacted ledger (what has been scored, by content hash and model)
    scores/<batch_id>/ledger/<run>-<n>.jsonl   ledger chunks of runs that have not compacted yet

Row fields: ``path`` (the store key: relative, POSIX; a name that is not UTF-8 has each such byte written
``\\xNN``, see :mod:`dfd.storage`), ``sha256``, ``bytes``, ``width`` and ``height`` (as stored, before
EXIF rotation), ``score`` (calibrated P(deepfake)), ``label`` (``real`` or ``deepfake``), ``threshold``,
``model_version``, ``scored_at`` (UTC ISO 8601), ``error``. A file that could not be scored has an empty
score and label, and ``error`` holds a short reason (``truncated: ...``, ``not an image: ...``,
``unreadable: ...``); the text before the first colon is the reason group counted in the summary.
In ``results.csv`` a text cell that a spreadsheet would run as a formula (it starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return) or that starts with a single quote gets a leading single quote
(:mod:`dfd.csvsafe`); ``results.jsonl`` and the ledger hold the text unchanged.

Batch id: a folder directly inside the inbox keeps its own name when that name is safe
(``[A-Za-z0-9][A-Za-z0-9._-]*``, at most 100 characters); any other folder gets
``<slug of its name>-<first 8 hex digits of sha1(its full URL)>``, so the same folder always maps to the
same id, and two folders with the same name in different places do not collide.

Idempotent and resumable: the ledger is keyed by (sha256, model_version). It is written as one small
object (atomically) about every second with the files finished since, so a run killed at any moment loses
at most that second of work; the next run reads the ledger, scores only what is missing and rebuilds the
results from the ledger and a fresh scan (exactly one row per file present). A file whose path, size and
modification time match a ledger line is not even re-read; a file whose content changed is re-hashed and
rescored. Files that could not be *read* (permissions, special files, storage errors) are not recorded, so
they are retried each run. If the input store itself fails (its listing fails after read errors), the run
fails and publishes nothing rather than a batch of "unreadable" rows. Inputs are only ever read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dfd import csvsafe, pipeline
from dfd.imageio import ImageError, decode_image, image_size, read_input
from dfd.storage import Conflict, NotFound, ObjectInfo, StorageError, Store, join, open_store

log = logging.getLogger("dfd.scoring")

SCORES = "scores"
RESULTS_CSV = "results.csv"
RESULTS_JSONL = "results.jsonl"
SUMMARY_JSON = "summary.json"
LEDGER_FILE = "ledger.jsonl"
LEDGER_CHUNKS = "ledger"

RESULT_FIELDS = (
    "path",
    "sha256",
    "bytes",
    "width",
    "height",
    "score",
    "label",
    "threshold",
    "model_version",
    "scored_at",
    "error",
)
LABELS = ("real", "deepfake")

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

# Status of one file coming out of the decode stage.
OK, CACHED, BAD_CONTENT, READ_ERROR = 0, 1, 2, 3


class ScoringError(RuntimeError):
    """A batch cannot be scored at all (missing or empty folder). The message is one line for the user."""


# --- ids and names --------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """Lowercase letters, digits and single dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def batch_id_for(source_url: str, inbox_url: str | None = None, endpoint_url: str | None = None) -> str:
    """A stable id for the folder at ``source_url`` (see the module docstring for the scheme)."""
    src = open_store(source_url, endpoint_url).url.rstrip("/")
    name = src.rsplit("/", 1)[-1]
    if inbox_url:
        inbox = open_store(inbox_url, endpoint_url)
        if inbox.describe(name).rstrip("/") == src and _SAFE_ID.fullmatch(name):
            return name
    digest = hashlib.sha1(src.encode("utf-8")).hexdigest()[:8]
    return f"{slug(name)[:60] or 'batch'}-{digest}"


def artifact_key(batch_id: str) -> str:
    """The Prefect artifact key for a batch: ``score-<slug>`` (plus a short hash when the slug lost detail)."""
    s = slug(batch_id)[:80] or "batch"
    if s != batch_id:
        s = f"{s}-{hashlib.sha1(batch_id.encode('utf-8')).hexdigest()[:6]}"
    return f"score-{s}"


def results_prefix(batch_id: str) -> str:
    return join(SCORES, batch_id)


# --- scanning -------------------------------------------------------------------------------------------


@dataclass
class Scan:
    """What a folder holds: the files to score, plus what readiness checks need."""

    items: list[ObjectInfo]  # files to score, in key order (relative keys)
    ignored: int = 0  # hidden files and the ready marker
    newest_mtime: float = 0.0  # newest modification time of anything but the marker (hidden files count)
    marker_mtime: float | None = None  # the ready marker's mtime, if present

    @property
    def fingerprint(self) -> str:
        """A hash of the listing (keys, sizes, mtimes): it changes when any file is added, removed or changed."""
        h = hashlib.sha256()
        for o in self.items:
            h.update(f"{o.key}\t{o.size}\t{o.mtime!r}\n".encode())
        return h.hexdigest()


def scan_folder(store: Store, marker: str = "_READY") -> Scan:
    """List every file under the store's root, recursively, in key order.

    Hidden files and folders (a name starting with '.') and the ready marker at the top are not scored;
    everything else is, whatever its extension (the content decides, a name proves nothing).
    """
    scan = Scan(items=[])
    for obj in store.list(""):
        if obj.key == marker:
            scan.marker_mtime = obj.mtime
            scan.ignored += 1
            continue
        scan.newest_mtime = max(scan.newest_mtime, obj.mtime)
        if any(part.startswith(".") for part in obj.key.split("/")):
            scan.ignored += 1
            continue
        scan.items.append(obj)
    return scan


def check_source(store: Store, scan: Scan | None = None, marker: str = "_READY") -> Scan:
    """Scan ``store`` or raise :class:`ScoringError` when the folder is missing or holds nothing to score."""
    local = store.local_path("")
    if local is not None and not local.is_dir():
        what = "is not a folder" if local.exists() else "does not exist"
        raise ScoringError(f"input folder {store.url} {what}")
    scan = scan if scan is not None else scan_folder(store, marker)
    if not scan.items:
        if local is None and scan.ignored == 0:
            raise ScoringError(f"input folder {store.url} does not exist or is empty")
        raise ScoringError(f"input folder {store.url} is empty: no files to score")
    return scan


# --- the ledger -----------------------------------------------------------------------------------------


@dataclass
class Entry:
    """What scoring one content (sha256) with one model gave."""

    score: float | None
    width: int | None
    height: int | None
    error: str
    scored_at: str


class Ledger:
    """Append-only record of scored content, keyed by (sha256, model_version), stored as JSON Lines.

    Each line also carries the path, size and mtime it was seen with, so an unchanged file is not re-read.
    New lines go to a fresh chunk object per :meth:`append` (atomic write); :meth:`compact` merges the
    chunks into ``ledger.jsonl`` with a conditional write and then deletes them. Readers merge both and
    de-duplicate, so a crash between any two steps leaves a ledger that is merely longer, never wrong.
    """

    def __init__(self, store: Store, prefix: str, model_version: str):
        self.store = store
        self.prefix = prefix
        self.version = model_version
        self.entries: dict[str, Entry] = {}  # sha256 -> entry, for self.version only
        self.seen: dict[str, tuple[int, float, str]] = {}  # path -> (bytes, mtime, sha256), self.version
        self.chunks_read: list[str] = []
        self.own_chunks: list[str] = []
        self.run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self.bad_lines = 0

    @property
    def file_key(self) -> str:
        return join(self.prefix, LEDGER_FILE)

    @property
    def chunk_prefix(self) -> str:
        return join(self.prefix, LEDGER_CHUNKS)

    def load(self) -> Ledger:
        try:
            self._ingest(self.store.read_bytes(self.file_key))
        except NotFound:
            pass
        for obj in self.store.list(self.chunk_prefix):
            if not obj.key.endswith(".jsonl"):
                continue
            try:
                self._ingest(self.store.read_bytes(obj.key))
            except NotFound:  # compacted by a concurrent run meanwhile: its lines are in ledger.jsonl
                with contextlib.suppress(NotFound):
                    self._ingest(self.store.read_bytes(self.file_key))
                continue
            self.chunks_read.append(obj.key)
        return self

    def _ingest(self, data: bytes) -> None:
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if rec["model_version"] != self.version:
                    continue
                self._remember(rec)
            except (ValueError, KeyError, TypeError):
                self.bad_lines += 1

    def _remember(self, rec: dict[str, Any]) -> None:
        sha = rec["sha256"]
        self.entries[sha] = Entry(
            score=None if rec.get("score") is None else float(rec["score"]),
            width=rec.get("width"),
            height=rec.get("height"),
            error=rec.get("error") or "",
            scored_at=rec.get("scored_at") or "",
        )
        self.seen[rec["path"]] = (int(rec["bytes"]), float(rec["mtime"]), sha)

    def has(self, sha: str) -> bool:
        return sha in self.entries

    def known_sha(self, obj: ObjectInfo) -> str | None:
        """The sha256 recorded for this path if its size and mtime are unchanged (and it has an entry)."""
        seen = self.seen.get(obj.key)
        if seen and seen[0] == obj.size and seen[1] == obj.mtime and seen[2] in self.entries:
            return seen[2]
        return None

    def record(self, obj: ObjectInfo, sha: str, entry: Entry) -> dict[str, Any]:
        rec = {
            "path": obj.key,
            "bytes": obj.size,
            "mtime": obj.mtime,
            "sha256": sha,
            "model_version": self.version,
            "score": entry.score,
            "width": entry.width,
            "height": entry.height,
            "error": entry.error,
            "scored_at": entry.scored_at,
        }
        self._remember(rec)
        return rec

    def append(self, records: list[dict[str, Any]]) -> None:
        """Persist ``records`` as one new chunk (atomic)."""
        if not records:
            return
        self._seq += 1
        key = join(self.chunk_prefix, f"{self.run_id}-{self._seq:06d}.jsonl")
        self.store.write_bytes(key, _jsonl(records))
        self.own_chunks.append(key)

    def compact(self) -> None:
        """Merge the chunks this process knows about into ``ledger.jsonl``, then delete them."""
        chunks = self.chunks_read + self.own_chunks
        if not chunks:
            return
        for _ in range(20):
            data, token = self.store.read_versioned(self.file_key)
            merged: dict[tuple[str, str, str], bytes] = {}
            for blob in [data or b""] + [self._read_or_empty(k) for k in chunks]:
                for raw in blob.splitlines():
                    try:
                        rec = json.loads(raw)
                        merged[(rec["path"], rec["sha256"], rec["model_version"])] = raw
                    except (ValueError, KeyError, TypeError):
                        continue
            try:
                self.store.write_if_unchanged(self.file_key, b"\n".join(merged.values()) + b"\n", token)
                break
            except Conflict:
                time.sleep(0.05)
            except (StorageError, OSError) as exc:  # a full disk too: an optimisation lost, nothing else
                log.warning("could not compact the ledger %s: %s; chunks kept", self.store.describe(self.prefix), exc)
                return
        else:
            log.warning("could not compact the ledger %s (busy); chunks kept", self.store.describe(self.prefix))
            return
        for key in chunks:
            try:
                self.store.delete(key)
            except NotFound:
                pass
            except (StorageError, OSError) as exc:  # harmless: its lines are in ledger.jsonl, readers de-duplicate
                log.warning("could not delete ledger chunk %s: %s", self.store.describe(key), exc)
        self.chunks_read, self.own_chunks = [], []

    def _read_or_empty(self, key: str) -> bytes:
        try:
            return self.store.read_bytes(key)
        except NotFound:
            return b""


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")


# --- reading and decoding one file ----------------------------------------------------------------------


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(exc: ImageError) -> str:
    return _short(f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason)


def error_reason(error: str) -> str:
    """The reason group of an error text (the part before the first colon)."""
    return error.split(":", 1)[0].strip() if error else ""


# --- scoring --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _writing(art: Store, prefix: str) -> Iterator[None]:
    """Turn an OS error while writing the batch's ledger or results (a full disk, a read-only folder) into
    one clear :class:`ScoringError`. Every write is atomic, so nothing torn is left behind."""
    try:
        yield
    except OSError as exc:
        why = (exc.strerror or str(exc)).lower()
        raise ScoringError(
            f"cannot write the results of this batch to {art.describe(prefix)}: {why}; the batch is not "
            "published (no summary.json), and a rerun resumes from what its ledger kept"
        ) from None


@dataclass
class Progress:
    total: int
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    last_log: float = 0.0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta = _fmt_seconds(left) if left != float("inf") else "?"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return f"{self.done}/{self.total} files ({pct:.0f}%), {rate:.1f} files/s, ETA {eta}"


def _fmt_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def stream_scores(
    store: Store,
    items: list[ObjectInfo],
    predictor: Any,
    batch_size: int,
    known: Callable[[str], bool],
    max_bytes: int,
    chunk: int | None = None,
    parallel: int | None = None,
) -> Iterator[tuple[list[int], list[int], list[str], list[tuple[float | None, int | None, int | None, str, int]]]]:
    """Stream ``items`` through read -> hash -> decode -> views (parallel, in tf.data) -> batched inference.

    Yields, per finished batch, the item indices with their status (OK, CACHED, BAD_CONTENT, READ_ERROR),
    sha256 and (score, width, height, error, bytes read; -1 when the file could not be read: it may differ
    from the listing's size when the file changed in between). The parallel map (``parallel`` workers,
    default one per core) works on chunks of up to 32 files (``chunk``) to keep tf.data's per-call overhead
    low. Only a bounded number of images is alive at a time: one decoded image per worker, plus the views of
    ``batch_size`` images times the prefetch depth.
    ``known(sha)`` says whether that content is already scored with this model (then it is not decoded).
    """
    import tensorflow as tf

    k = predictor.views_per_image
    size = int(predictor.spec["size"])
    view_shape = (k, size, size, 3)
    workers = max(1, int(parallel or pipeline.cpu_cores()))
    if chunk is None:  # big enough to keep per-call overhead low, small enough to spread a small folder
        chunk = math.ceil(len(items) / (4 * workers))
    chunk = max(1, min(int(chunk), int(batch_size), 32))

    def load_one(i: int, views_out: np.ndarray) -> tuple[int, str, int, int, str, int]:
        """Fill ``views_out`` for item ``i``; returns (status, sha256, width, height, error, bytes read)."""
        obj = items[i]
        try:
            data = read_input(store, obj, max_bytes)
        except ImageError as exc:
            return READ_ERROR, "", 0, 0, _error_text(exc), -1
        except Exception as exc:  # noqa: BLE001 - one odd file must never stop the batch
            return READ_ERROR, "", 0, 0, f"unreadable: {_short(exc, 100)}", -1
        sha, n = hashlib.sha256(data).hexdigest(), len(data)
        if known(sha):
            return CACHED, sha, 0, 0, "", n
        try:
            decoded = decode_image(data, predictor.max_pixels)
            views = predictor.views(decoded.pixels)
            if views.shape != view_shape:
                raise ImageError("unreadable image", f"unexpected view shape {views.shape}")
            views_out[...] = views
            return OK, sha, decoded.width, decoded.height, "", n
        except ImageError as exc:
            w, h = image_size(data) or (0, 0)
            return BAD_CONTENT, sha, w, h, _error_text(exc), n
        except MemoryError:
            return BAD_CONTENT, sha, 0, 0, "too large: out of memory while decoding", n
        except Exception as exc:  # noqa: BLE001
            return BAD_CONTENT, sha, 0, 0, f"unreadable image: {_short(exc, 100)}", n

    def load_chunk(idx: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(idx)
        views = np.zeros((n, *view_shape), np.uint8)
        meta = [load_one(int(i), views[j]) for j, i in enumerate(idx)]
        return (
            idx.astype(np.int64),
            views,
            np.array([m[0] for m in meta], np.int32),
            np.array([m[1].encode() for m in meta], dtype=object),
            np.array([m[2] for m in meta], np.int32),
            np.array([m[3] for m in meta], np.int32),
            np.array([m[4].encode("utf-8", "backslashreplace") for m in meta], dtype=object),
            np.array([m[5] for m in meta], np.int64),
        )

    touts = [tf.int64, tf.uint8, tf.int32, tf.string, tf.int32, tf.int32, tf.string, tf.int64]

    def tf_load(idx: Any) -> tuple[Any, ...]:
        out = tf.numpy_function(load_chunk, [idx], touts, stateful=False)
        out[1].set_shape((None, *view_shape))
        for t in (out[0], out[2], out[3], out[4], out[5], out[6], out[7]):
            t.set_shape((None,))
        return tuple(out)

    ds = tf.data.Dataset.range(len(items)).batch(chunk)
    ds = ds.map(tf_load, num_parallel_calls=workers, deterministic=False)
    ds = pipeline.fixed(ds.unbatch().batch(max(1, int(batch_size))).prefetch(pipeline.PREFETCH_BATCHES))
    for idx, views, status, sha, width, height, err, nbytes in ds.as_numpy_iterator():
        ok = status == OK
        scores = np.full(len(idx), np.nan)
        if ok.any():
            batch = views[ok].reshape(-1, size, size, 3).astype(np.float32)
            scores[ok] = predictor.score_views(batch)
        results = [
            (
                None if not ok[j] else float(scores[j]),
                int(width[j]) or None,
                int(height[j]) or None,
                err[j].decode("utf-8", "replace"),
                int(nbytes[j]),
            )
            for j in range(len(idx))
        ]
        yield [int(x) for x in idx], [int(s) for s in status], [s.decode() for s in sha], results


def score_folder(
    source: str | Store,
    artifacts: str | Store,
    predictor: Any,
    model_version: str,
    *,
    batch_id: str | None = None,
    inbox_url: str | None = None,
    batch_size: int = 64,
    marker: str = "_READY",
    max_file_bytes: int = 64 * 1024 * 1024,
    endpoint_url: str | None = None,
    log_fn: Callable[[str], None] | None = None,
    progress_every: float = 5.0,
    flush_seconds: float = 1.0,
    scan: Scan | None = None,
) -> dict[str, Any]:
    """Score every file under ``source`` with ``predictor`` and write the results; returns the summary.

    Finished files go to the ledger as one atomic chunk at most every ``flush_seconds`` (0: after every
    batch), so a killed run loses at most that much work. Raises :class:`ScoringError` for a missing or
    empty folder, or when the ledger or results cannot be written (a full disk). Bad files never raise: they
    get a row with an error.
    """
    say = log_fn or log.info
    src = source if isinstance(source, Store) else open_store(source, endpoint_url)
    art = artifacts if isinstance(artifacts, Store) else open_store(artifacts, endpoint_url)
    batch_id = batch_id or batch_id_for(src.url, inbox_url, endpoint_url)
    prefix = results_prefix(batch_id)
    started_at, t0 = _now(), time.monotonic()

    scan = check_source(src, scan, marker)
    items = list(scan.items)  # a file that changed since the listing gets its entry replaced below
    ledger = Ledger(art, prefix, model_version).load()
    if ledger.bad_lines:
        say(f"ledger: ignored {ledger.bad_lines} unreadable line(s)")

    sha_of: dict[str, str] = {}
    pending: list[int] = []
    for i, obj in enumerate(items):
        sha = ledger.known_sha(obj)
        if sha is not None:
            sha_of[obj.key] = sha
        else:
            pending.append(i)
    say(
        f"batch {batch_id}: {len(items)} files in {src.url}, {len(items) - len(pending)} already scored "
        f"with model {model_version}, {len(pending)} to check"
    )

    read_errors: dict[str, str] = {}
    inferred = reused = 0
    progress = Progress(total=len(pending))
    unflushed: list[dict[str, Any]] = []
    last_flush = time.monotonic()
    if pending:
        todo = [items[i] for i in pending]
        for idx, status, shas, results in stream_scores(src, todo, predictor, batch_size, ledger.has, max_file_bytes):
            now = _now()
            for j, st, sha, (score, width, height, err, nbytes) in zip(idx, status, shas, results, strict=True):
                obj = todo[j]
                if st == READ_ERROR:
                    read_errors[obj.key] = err
                    continue
                if nbytes != obj.size:
                    # It changed between the listing and the read: the row describes what was read, and the
                    # ledger gets no listing to match (mtime -1), so the next run reads it again.
                    obj = items[pending[j]] = ObjectInfo(obj.key, nbytes, -1.0)
                sha_of[obj.key] = sha
                if st == CACHED and ledger.has(sha):
                    entry = ledger.entries[sha]
                    reused += 1
                else:
                    entry = Entry(score, width, height, err, now)
                    inferred += st == OK
                unflushed.append(ledger.record(obj, sha, entry))
            if time.monotonic() - last_flush >= flush_seconds:
                with _writing(art, prefix):
                    ledger.append(unflushed)
                unflushed, last_flush = [], time.monotonic()
            progress.done += len(idx)
            if time.monotonic() - progress.last_log >= progress_every:
                progress.last_log = time.monotonic()
                say(f"scored {progress.line()}")
        with _writing(art, prefix):
            ledger.append(unflushed)
        say(f"scored {progress.line()}")
    process_s = time.monotonic() - progress.started
    if read_errors:
        # Files that could not be read are listed as errors only if the store itself still answers: when
        # it is down (an S3 outage), fail the run instead, so that no results full of errors are published.
        try:
            next(iter(src.list("")), None)
        except StorageError as exc:
            raise ScoringError(
                f"the input store failed while the batch was read ({exc}); no results were written, "
                "rerun when it is reachable"
            ) from None

    with _writing(art, prefix):
        summary = write_results(
            art,
            prefix,
            items,
            sha_of,
            ledger,
            read_errors,
            threshold=float(predictor.threshold),
            model_version=model_version,
        )
    ledger.compact()
    finished = time.monotonic()
    summary.update(
        {
            "batch_id": batch_id,
            "source": src.url,
            "model_version": model_version,
            "threshold": float(predictor.threshold),
            "input_fingerprint": scan.fingerprint,
            "ignored_files": scan.ignored,
            "scored_this_run": inferred,
            "reused_this_run": reused + (len(items) - len(pending)),
            "checked_this_run": len(pending),
            "batch_size": int(batch_size),
            "started_at": started_at,
            "finished_at": _now(),
            "duration_s": round(finished - t0, 3),
            "files_per_s": round(len(pending) / process_s, 2) if pending and process_s > 0 else None,
            "status": "complete",
        }
    )
    summary["results"] = {
        "folder": art.describe(prefix),
        "csv": art.describe(join(prefix, RESULTS_CSV)),
        "jsonl": art.describe(join(prefix, RESULTS_JSONL)),
        "summary": art.describe(join(prefix, SUMMARY_JSON)),
    }
    with _writing(art, prefix):
        art.write_json(join(prefix, SUMMARY_JSON), summary)
    return summary


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
    """Write results.csv and results.jsonl (one row per item, via local temp files and atomic uploads)."""
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
                    counts["error"] += 1
                else:
                    counts[row["label"]] += 1
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
                fj.write(json.dumps(row, ensure_ascii=False) + "\n")
        art.upload_file(csv_path, join(prefix, RESULTS_CSV))
        art.upload_file(jsonl_path, join(prefix, RESULTS_JSONL))
    return {
        "files": len(items),
        "scored": counts["real"] + counts["deepfake"],
        "errors": counts["error"],
        "counts": {"real": counts["real"], "deepfake": counts["deepfake"], "error": counts["error"]},
        "errors_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def result_row(
    obj: ObjectInfo,
    sha: str | None,
    ledger: Ledger,
    read_error: str | None,
    threshold: float,
    model_version: str,
) -> dict[str, Any]:
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
        "scored_at": _now(),
        "error": "",
    }
    entry = ledger.entries.get(sha) if sha else None
    if read_error is not None or entry is None:
        row["error"] = read_error or "not scored: internal error, rerun the batch"
        return row
    row.update(width=entry.width, height=entry.height, scored_at=entry.scored_at, error=entry.error)
    if entry.score is not None and not entry.error:
        row["score"] = round(float(entry.score), 6)
        row["label"] = "deepfake" if entry.score >= threshold else "real"
    return row


# --- model loading --------------------------------------------------------------------------------------

_PREDICTORS: dict[tuple[str, str], Any] = {}


def load_predictor(artifacts: Store, version: str | None, work_dir: str | Path = ".dfd-work") -> tuple[Any, str]:
    """The predictor for ``version`` (default: the champion) and the resolved version; cached per process.

    Raises :class:`dfd.registry.RegistryError` when there is no champion or the version is unknown.
    """
    from dfd.predict import Predictor
    from dfd.registry import fetch_model_dir, resolve_version

    resolved = resolve_version(artifacts, version)
    key = (artifacts.url, resolved)
    if key not in _PREDICTORS:
        _PREDICTORS.clear()  # keep one model in memory
        folder = fetch_model_dir(artifacts, resolved, work_dir)
        _PREDICTORS[key] = Predictor.from_folder(folder)
    return _PREDICTORS[key], resolved


def format_summary(summary: dict[str, Any]) -> str:
    """The human-readable end-of-run summary (several lines)."""
    c = summary["counts"]
    lines = [
        f"batch {summary['batch_id']}: {summary['files']} files, {summary['scored']} scored "
        f"(real {c['real']}, deepfake {c['deepfake']}), {summary['errors']} errors",
    ]
    if summary["errors_by_reason"]:
        lines.append("  errors: " + ", ".join(f"{k} {v}" for k, v in summary["errors_by_reason"].items()))
    rate = summary.get("files_per_s")
    lines.append(
        f"  model {summary['model_version']} (threshold {summary['threshold']:.4g}); scored now "
        f"{summary['scored_this_run']}, reused {summary['reused_this_run']}; {summary['duration_s']:.1f}s"
        + (f", {rate:.1f} files/s" if rate else "")
    )
    lines.append(f"  results: {summary['results']['csv']}")
    lines.append(f"           {summary['results']['jsonl']}")
    lines.append(f"           {summary['results']['summary']}")
    return "\n".join(lines)
