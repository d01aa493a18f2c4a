"""The ledger of a batch: what has been scored, by content hash and model, so that a rerun resumes.

Keys relative to the batch's results folder (:mod:`dfd.layout`): ``ledger.jsonl`` (compacted) and
``ledger/<run>-<n>.jsonl`` (chunks of runs that have not compacted yet). It is keyed by (sha256,
model_version) and written as one small object (atomically) about every second with the files finished since,
so a run killed at any moment loses at most that second of work. Each line also carries the path, size and
mtime the file was seen with, so a file whose listing matches a line is not even re-read.

Temporary files: on a local store every write goes through a ``.tmp-*`` file that is renamed into place, so a
``kill -9`` in the middle of a write leaves that file behind (never read as ledger or results: listings skip
it). :meth:`Ledger.load` removes those of the batch's folder and its ``ledger/`` folder that were last modified
before the run started: a temporary file lives only for the one write that made it, so one older than this run
belongs to a write that was killed. Batches are written by one run at a time (the deployments have a
concurrency limit of 1); a second run of the same batch started by hand could at worst lose a chunk write that
straddles this run's start, which fails that run with a clear error and its rerun resumes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dfd.layout import LEDGER_CHUNKS, LEDGER_FILE
from dfd.storage import Conflict, NotFound, ObjectInfo, StorageError, Store, join

log = logging.getLogger("dfd.scoring")


def utc_now() -> str:
    """The time stamp of the ledger and the results: UTC, ISO 8601, whole seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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
        self.started = time.time()  # temporary files older than this were left by killed writes
        self.removed_temporaries: list[str] = []
        self._seq = 0
        self.bad_lines = 0

    @property
    def file_key(self) -> str:
        return join(self.prefix, LEDGER_FILE)

    @property
    def chunk_prefix(self) -> str:
        return join(self.prefix, LEDGER_CHUNKS)

    def load(self) -> Ledger:
        """Read the compacted ledger and every chunk, after removing stale temporary files (module doc)."""
        for folder in (self.prefix, self.chunk_prefix):
            try:
                names = self.store.remove_stale_temporaries(folder, self.started)
            except (StorageError, OSError) as exc:  # only space is at stake: never fail the run for it
                log.warning("could not remove temporary files in %s: %s", self.store.describe(folder), exc)
                continue
            self.removed_temporaries += [join(folder, name) for name in names]
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
