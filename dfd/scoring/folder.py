"""Scoring one folder: the recipe that puts scan, ledger, pipeline and results writer together.

``summary.json`` is the batch's commit marker: readers (the viewer, the inbox) only look at a batch through it,
and it is written last. A rescoring (a batch that already has results) first withdraws it, then replaces
``results.csv`` and ``results.jsonl``, then writes the new ``summary.json``, which also records the sha256 of
the two results files it describes (``results_sha256``). So whenever ``summary.json`` exists, the results
files beside it are the ones it describes: a run killed (or out of space) half-way through a rescoring leaves
a batch that is not listed until a rerun publishes it again, never new results under an old summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dfd.layout import SUMMARY_JSON
from dfd.scoring.errors import ScoringError, writing
from dfd.scoring.ids import batch_id_for, results_prefix
from dfd.scoring.ledger import Entry, Ledger, utc_now
from dfd.scoring.reader import Outcome, Status
from dfd.scoring.report import Progress, caveat_of
from dfd.scoring.results import result_locations, write_results
from dfd.scoring.scan import Scan, check_source
from dfd.scoring.stream import stream_scores
from dfd.settings import Settings
from dfd.storage import ObjectInfo, StorageError, Store, join, open_store

log = logging.getLogger("dfd.scoring")


@dataclass(frozen=True)
class ScoreOptions:
    """How a folder is scored: everything but what is scored, where the results go and with which model."""

    batch_size: int = 64  # images per inference batch
    marker: str = "_READY"  # the ready marker at the top of a folder (never scored)
    max_file_bytes: int = 64 * 1024 * 1024  # larger files are refused unread
    endpoint_url: str | None = None  # S3 endpoint for stores given as URLs ("" or None: S3_ENDPOINT_URL, else AWS)
    inbox_url: str | None = None  # the inbox: a folder directly inside it keeps its name as batch id
    progress_every: float = 5.0  # seconds between progress lines
    flush_seconds: float = 1.0  # a ledger chunk at most this often (0: after every batch): the work a kill loses

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ScoreOptions:
        """The options the settings give (``overrides`` win)."""
        return replace(
            cls(batch_size=settings.score_batch_size, marker=settings.ready_marker,
                max_file_bytes=settings.max_file_bytes, endpoint_url=settings.s3_endpoint_url,
                inbox_url=settings.inbox_url, flush_seconds=settings.ledger_flush_seconds),
            **overrides,
        )


@dataclass
class _Run:
    """One run over a batch: the files, and what this run learnt about each so far."""

    items: list[ObjectInfo]  # the scan's files; one that changed since the listing is replaced by what was read
    ledger: Ledger
    sha_of: dict[str, str] = field(default_factory=dict)  # key -> sha256
    read_errors: dict[str, str] = field(default_factory=dict)  # key -> error, files that could not be read
    pending: list[int] = field(default_factory=list)  # indices of items the ledger does not vouch for
    inferred: int = 0
    reused: int = 0

    def __post_init__(self) -> None:
        for i, obj in enumerate(self.items):
            sha = self.ledger.known_sha(obj)
            if sha is not None:
                self.sha_of[obj.key] = sha
            else:
                self.pending.append(i)

    def take(self, outcome: Outcome, now: str) -> dict[str, Any] | None:
        """Note what came of the ``outcome.index``-th pending file; returns its ledger record (None: unread)."""
        obj = self.items[self.pending[outcome.index]]
        if outcome.status == Status.READ_ERROR:
            self.read_errors[obj.key] = outcome.error
            return None
        if outcome.nbytes != obj.size:
            # It changed between the listing and the read: the row describes what was read, and the ledger
            # gets no listing to match (mtime -1), so the next run reads it again.
            obj = self.items[self.pending[outcome.index]] = ObjectInfo(obj.key, outcome.nbytes, -1.0)
        self.sha_of[obj.key] = outcome.sha256
        if outcome.status == Status.CACHED and self.ledger.has(outcome.sha256):
            entry = self.ledger.entries[outcome.sha256]
            self.reused += 1
        else:
            entry = Entry(outcome.score, outcome.width, outcome.height, outcome.error, now)
            self.inferred += outcome.status == Status.OK
        return self.ledger.record(obj, outcome.sha256, entry)


@dataclass
class Batch:
    """One batch on its way: where it is read from and written to, its listing, and this run's state.

    :func:`open_batch` makes it (scan, ledger), something scores ``run.pending`` (in this process,
    :func:`score_folder`, or shards on a Dask cluster, :mod:`dfd.scoring.shards`), and :func:`finish_batch`
    writes the results and the summary: the one writer, whichever engine scored."""

    src: Store
    art: Store
    batch_id: str
    prefix: str
    scan: Scan
    run: _Run
    model_version: str
    started_at: str
    t0: float


def open_batch(
    source: str | Store,
    artifacts: str | Store,
    model_version: str,
    opts: ScoreOptions,
    *,
    batch_id: str | None = None,
    scan: Scan | None = None,
    say: Callable[[str], None] = log.info,
) -> Batch:
    """Check and list the folder (unless ``scan`` is its listing) and load its ledger: what is left to score is
    ``batch.run.pending``. Raises :class:`ScoringError` for a missing or empty folder."""
    src, art = (s if isinstance(s, Store) else open_store(s, opts.endpoint_url) for s in (source, artifacts))
    batch_id = batch_id or batch_id_for(src.url, opts.inbox_url, opts.endpoint_url)
    prefix = results_prefix(batch_id)
    started_at, t0 = utc_now(), time.monotonic()

    scan = check_source(src, scan, opts.marker)
    run = _Run(list(scan.items), Ledger(art, prefix, model_version).load())
    if run.ledger.bad_lines:
        say(f"ledger: ignored {run.ledger.bad_lines} unreadable line(s)")
    if run.ledger.removed_temporaries:
        say(f"removed {len(run.ledger.removed_temporaries)} temporary file(s) left by an interrupted run")
    say(f"batch {batch_id}: {len(run.items)} files in {src.url}, {len(run.items) - len(run.pending)} already "
        f"scored with model {model_version}, {len(run.pending)} to check")
    return Batch(src, art, batch_id, prefix, scan, run, model_version, started_at, t0)


def finish_batch(batch: Batch, threshold: float, opts: ScoreOptions, process_s: float) -> dict[str, Any]:
    """Withdraw summary.json, write results.csv/jsonl, compact the ledger, then write summary.json (last; the
    module doc says why); returns the summary.
    ``process_s`` is the time the scoring itself took (for ``files_per_s``)."""
    run, art, prefix = batch.run, batch.art, batch.prefix
    _check_input_store(batch.src, run.read_errors)
    threshold = float(threshold)
    with writing(art, prefix):
        art.delete(join(prefix, SUMMARY_JSON))  # withdraw the commit marker before replacing what it describes
        summary = write_results(art, prefix, run.items, run.sha_of, run.ledger, run.read_errors,
                                threshold=threshold, model_version=batch.model_version)
    run.ledger.compact()
    finished = time.monotonic()
    checked = len(run.pending)
    summary.update({
        "batch_id": batch.batch_id, "source": batch.src.url, "model_version": batch.model_version,
        "threshold": threshold, "input_fingerprint": batch.scan.fingerprint, "ignored_files": batch.scan.ignored,
        "scored_this_run": run.inferred, "reused_this_run": run.reused + (len(run.items) - checked),
        "checked_this_run": checked, "batch_size": int(opts.batch_size), "started_at": batch.started_at,
        "finished_at": utc_now(), "duration_s": round(finished - batch.t0, 3),
        "files_per_s": round(checked / process_s, 2) if checked and process_s > 0 else None,
        "status": "complete", "results": result_locations(art, prefix),
        "model_caveat": caveat_of(art, batch.model_version),  # what these verdicts are worth (demo model...)
    })
    with writing(art, prefix):
        art.write_json(join(prefix, SUMMARY_JSON), summary)
    return summary


def score_folder(
    source: str | Store,
    artifacts: str | Store,
    predictor: Any,
    model_version: str,
    options: ScoreOptions | None = None,
    *,
    batch_id: str | None = None,
    scan: Scan | None = None,
    log_fn: Callable[[str], None] | None = None,
    progress_fn: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Score every file under ``source`` with ``predictor`` and write the results; returns the summary.

    ``options`` (or single :class:`ScoreOptions` fields as keywords, e.g. ``batch_size=8``) say how;
    ``batch_id`` defaults to the folder's (:func:`batch_id_for`), ``scan`` to a fresh listing. Raises
    :class:`ScoringError` for a missing or empty folder, or when the ledger or results cannot be written (a full
    disk). Bad files never raise: they get a row with an error. ``progress_fn``, when given, is called with
    (files checked, files to check) after each inference batch (the flow's progress artifact).
    """
    opts = replace(options or ScoreOptions(), **overrides)
    say = log_fn or log.info
    batch = open_batch(source, artifacts, model_version, opts, batch_id=batch_id, scan=scan, say=say)
    process_s = _score_pending(batch.run, batch.src, batch.art, batch.prefix, predictor, opts, say, progress_fn)
    return finish_batch(batch, predictor.threshold, opts, process_s)


def _score_pending(run: _Run, src: Store, art: Store, prefix: str, predictor: Any, opts: ScoreOptions,
                   say: Callable[[str], None], progress_fn: Callable[[int, int], None] | None = None) -> float:
    """Score the files the ledger does not vouch for, a ledger chunk at most every ``opts.flush_seconds``;
    returns the seconds it took."""
    progress = Progress(total=len(run.pending))
    if run.pending:
        todo = [run.items[i] for i in run.pending]
        unflushed: list[dict[str, Any]] = []
        last_flush = time.monotonic()
        for outcomes in stream_scores(src, todo, predictor, opts.batch_size, run.ledger.has, opts.max_file_bytes):
            now = utc_now()
            unflushed += [rec for o in outcomes if (rec := run.take(o, now)) is not None]
            if time.monotonic() - last_flush >= opts.flush_seconds:
                with writing(art, prefix):
                    run.ledger.append(unflushed)
                unflushed, last_flush = [], time.monotonic()
            progress.done += len(outcomes)
            if progress_fn is not None:
                progress_fn(progress.done, progress.total)
            if progress.due(opts.progress_every):
                say(f"scored {progress.line()}")
        with writing(art, prefix):
            run.ledger.append(unflushed)
        say(f"scored {progress.line()}")
    return time.monotonic() - progress.started


def _check_input_store(src: Store, read_errors: dict[str, str]) -> None:
    """Files that could not be read are listed as errors only if the store itself still answers: when it is
    down (an S3 outage), fail the run instead, so that no results full of errors are published."""
    if not read_errors:
        return
    try:
        next(iter(src.list("")), None)
    except StorageError as exc:
        raise ScoringError(
            f"the input store failed while the batch was read ({exc}); no results were written, "
            "rerun when it is reachable"
        ) from None
