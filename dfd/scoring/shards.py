"""Scoring one batch in shards, for a Dask cluster: plan the shards, score one on a worker, merge them.

The driver lists the folder once and loads the ledger (:func:`dfd.scoring.folder.open_batch`); the files the
ledger does not vouch for are cut into :class:`ShardJob`\\ s of ``shard_files`` files each (:func:`plan_shards`).
A worker scores a job with :func:`score_shard`: the same pipeline, ledger chunks and error handling as the
single-process path (:func:`dfd.scoring.folder._score_pending`), with the model from this process's one model
cache (:func:`worker_predictor`: loaded once per worker process, not once per shard). Each shard first reads
the batch's ledger, so a shard redone after its worker died skips what the dead worker had already put in its
ledger chunks. :func:`merge_shards` then folds the shards' outcomes into the batch, reloads the ledger (every
worker's chunks) and :func:`dfd.scoring.folder.finish_batch` writes results, ledger and summary: the one
writer, as in a single-process run. Nothing here imports Dask or Prefect (``flows/score_batch.py`` wires them).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dfd.scoring.folder import Batch, ScoreOptions, _Run, _score_pending
from dfd.scoring.ledger import Ledger
from dfd.settings import Settings
from dfd.storage import ObjectInfo

log = logging.getLogger("dfd.scoring")


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to score one shard: small and picklable (URLs and settings, not open stores)."""

    index: int  # position of the shard in the plan
    source_url: str
    artifacts_url: str
    prefix: str  # the batch's results folder in the artifact store
    model_version: str  # resolved once by the driver, so every shard uses the same model
    items: tuple[ObjectInfo, ...]
    settings: Settings
    options: ScoreOptions


@dataclass
class ShardResult:
    """What came of one shard (its ledger lines are in the chunks it wrote)."""

    index: int
    items: list[ObjectInfo]  # the shard's files; one that changed since the listing is what was read
    sha_of: dict[str, str] = field(default_factory=dict)
    read_errors: dict[str, str] = field(default_factory=dict)
    inferred: int = 0
    reused: int = 0  # found in the ledger (content already scored, or written by a worker that died)
    seconds: float = 0.0
    worker_pid: int = 0
    chunks: int = 0


def plan_shards(batch: Batch, settings: Settings, options: ScoreOptions, shard_files: int) -> list[ShardJob]:
    """The files of ``batch`` its ledger does not vouch for, in listing order, cut into jobs of at most
    ``shard_files`` files (none when everything is scored already)."""
    size = max(1, int(shard_files))
    todo = [batch.run.items[i] for i in batch.run.pending]
    return [
        ShardJob(n, batch.src.url, batch.art.url, batch.prefix, batch.model_version, tuple(todo[i : i + size]),
                 settings, options)
        for n, i in enumerate(range(0, len(todo), size))
    ]


# --- on a worker --------------------------------------------------------------------------------------------

_LOADS: dict[tuple[str, str], int] = {}  # (artifact store, version) -> models this process loaded
_SEEN: dict[tuple[str, str], int] = {}  # (artifact store, version) -> id() of the predictor last handed out
_LOCK = threading.Lock()


def worker_predictor(settings: Settings, artifacts_url: str, version: str) -> Any:
    """The predictor of ``version``, from this process's one model cache (:func:`dfd.predict.load_published`):
    a worker process loads a model once and reuses it for every shard it scores. Counts real loads
    (:func:`load_counts`)."""
    from dfd.predict import load_published

    art = settings.store(artifacts_url)
    predictor = load_published(art, version, settings.work_dir)
    key = (art.url, version)
    with _LOCK:
        if _SEEN.get(key) != id(predictor):  # a new object: load_published loaded it now
            _SEEN[key] = id(predictor)
            _LOADS[key] = _LOADS.get(key, 0) + 1
    return predictor


def load_counts() -> dict[str, int]:
    """How many times this process loaded each model (``"<store> <version>"``): one per worker is the goal."""
    with _LOCK:
        return {f"{url} {version}": n for (url, version), n in _LOADS.items()}


def score_shard(job: ShardJob, say: Callable[[str], None] | None = None) -> ShardResult:
    """Score one shard on this process (a Dask worker): the single-process path on the shard's files, with
    its own ledger chunks (named with this process's id, so an operator can tell which worker wrote them)."""
    say = say or log.info
    t0 = time.monotonic()
    settings, opts = job.settings, job.options
    src, art = settings.store(job.source_url), settings.store(job.artifacts_url)
    predictor = worker_predictor(settings, job.artifacts_url, job.model_version)
    ledger = Ledger(art, job.prefix, job.model_version)
    ledger.started = 0.0  # remove no temporary file: other workers are writing chunks beside this one
    ledger.load()
    ledger.run_id = f"{ledger.run_id}-pid{os.getpid()}"
    run = _Run(list(job.items), ledger)
    say(f"shard {job.index}: {len(run.items)} files, {len(run.items) - len(run.pending)} already in the ledger")
    _score_pending(run, src, art, job.prefix, predictor, opts, say)
    return ShardResult(
        index=job.index, items=run.items, sha_of=run.sha_of, read_errors=run.read_errors, inferred=run.inferred,
        reused=run.reused + len(run.items) - len(run.pending), seconds=time.monotonic() - t0,
        worker_pid=os.getpid(), chunks=len(ledger.own_chunks),
    )


# --- back on the driver -------------------------------------------------------------------------------------


def merge_shards(batch: Batch, results: list[ShardResult]) -> Batch:
    """Fold the shards' outcomes into ``batch`` (ready for :func:`dfd.scoring.folder.finish_batch`): each file
    once, in listing order; the ledger reloaded with every worker's chunks."""
    run = batch.run
    by_key: dict[str, ObjectInfo] = {}
    for res in sorted(results, key=lambda r: r.index):
        by_key.update((obj.key, obj) for obj in res.items)
        run.sha_of.update(res.sha_of)
        run.read_errors.update(res.read_errors)
        run.inferred += res.inferred
        run.reused += res.reused
    run.items = [by_key.get(obj.key, obj) for obj in run.items]
    fresh = Ledger(batch.art, batch.prefix, batch.model_version).load()
    fresh.run_id = run.ledger.run_id
    run.ledger = fresh
    return batch
