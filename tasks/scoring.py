"""Prefect tasks of the batch-scoring flow: thin wrappers around :mod:`dfd.scoring` and :mod:`dfd.inbox`."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from dfd.inbox import FolderState, inbox_states
from dfd.scoring import Scan, ScoreOptions, artifact_key, load_predictor, score_folder
from dfd.scoring.folder import Batch, finish_batch, open_batch
from dfd.scoring.shards import ShardJob, ShardResult, merge_shards, plan_shards, score_shard
from dfd.settings import Settings
from dfd.storage import NotFound, StorageError
from tasks.progress import Progress


@task(name="find-ready-batches", cache_policy=NO_CACHE)
def find_ready_batches(settings: Settings) -> list[FolderState]:
    """Every folder of the inbox with its state and listing; ``due`` ones are complete and not yet scored as
    they are."""
    logger = get_run_logger()
    inbox, artifacts = settings.store(settings.inbox_url), settings.store(settings.artifacts_url)
    states = inbox_states(inbox, artifacts, settings.ready_marker, settings.quiet_seconds,
                          endpoint_url=settings.s3_endpoint_url)
    for st in states:
        logger.info("inbox folder %s: %s (%d files)%s", st.name, st.reason, st.files, " -> scoring" if st.due else "")
    if not states:
        logger.info("inbox %s has no folders", inbox.url)
    return states


def _storage_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only when storage failed (a network blip): the ledger makes the retry resume, not restart."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, StorageError) and not isinstance(exc, NotFound)


@task(name="score-folder", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, retry_condition_fn=_storage_failure)
def score_folder_task(
    source_url: str,
    settings: Settings,
    model_version: str | None = None,
    batch_id: str | None = None,
    scan: Scan | None = None,
) -> dict[str, Any]:
    """Load the model (champion by default) and score one folder; returns the summary. ``scan`` is the
    folder's listing when the caller has it already (an inbox poll), so it is not listed twice."""
    logger = get_run_logger()
    artifacts = settings.store(settings.artifacts_url)
    predictor, version = load_predictor(artifacts, model_version, settings.work_dir)
    logger.info(
        "model %s (threshold %.4g, %d view(s) per image)", version, predictor.threshold, predictor.views_per_image
    )
    options = ScoreOptions.from_settings(settings)
    bar = Progress("score-progress", f"Files of `{batch_id or source_url}` checked with model {version}")
    summary = score_folder(source_url, artifacts, predictor, version, options, batch_id=batch_id, scan=scan,
                           log_fn=logger.info, progress_fn=bar)
    bar.finish(f"Batch `{summary['batch_id']}`: {summary['checked_this_run']} files checked, "
               f"{summary['files']} in the batch")
    return summary


@task(name="plan-shards", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=_storage_failure)
def plan_shards_task(
    source_url: str,
    settings: Settings,
    model_version: str | None = None,
    batch_id: str | None = None,
    scan: Scan | None = None,
) -> tuple[Batch, list[ShardJob], float]:
    """The driver's half of a Dask run: resolve the model (champion by default) without loading it, list the
    folder once (unless ``scan`` is its listing), load the ledger and cut what is left into shards of
    ``settings.score_shard_files`` files. Returns the batch, its jobs and the model's threshold."""
    from dfd.layout import METADATA_FILE, run_key
    from dfd.registry import resolve_version

    logger = get_run_logger()
    artifacts = settings.store(settings.artifacts_url)
    version = resolve_version(artifacts, model_version)
    threshold = float(artifacts.read_json(run_key(version, METADATA_FILE))["threshold"])
    options = ScoreOptions.from_settings(settings)
    batch = open_batch(source_url, artifacts, version, options, batch_id=batch_id, scan=scan, say=logger.info)
    jobs = plan_shards(batch, settings, options, settings.score_shard_files)
    logger.info("model %s (threshold %.4g): %d shard(s) of at most %d files", version, threshold, len(jobs),
                settings.score_shard_files)
    return batch, jobs, threshold


@task(name="score-shard", cache_policy=NO_CACHE)
def score_shard_task(job: ShardJob) -> ShardResult:
    """Score one shard on a Dask worker (model loaded once per worker process); returns what came of it."""
    logger = get_run_logger()
    result = score_shard(job, say=logger.info)
    logger.info("shard %d: %d files in %.1fs on worker pid %d (%d scored, %d reused)", job.index,
                len(result.items), result.seconds, result.worker_pid, result.inferred, result.reused)
    return result


@task(name="merge-shards", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5,
      retry_condition_fn=_storage_failure)
def merge_shards_task(batch: Batch, results: list[ShardResult], threshold: float, settings: Settings,
                      process_s: float) -> dict[str, Any]:
    """Merge the shards and write results, ledger and summary, exactly as a single-process run does."""
    merge_shards(batch, results)
    return finish_batch(batch, threshold, ScoreOptions.from_settings(settings), process_s)


@task(name="publish-score-summary", cache_policy=NO_CACHE)
def publish_summary(summary: dict[str, Any]) -> str:
    """Publish a batch summary as a Prefect table artifact under the stable key ``score-<batch>``."""
    key = artifact_key(summary["batch_id"])
    table = [{"label": label, "files": n} for label, n in summary["counts"].items()]
    table += [{"label": f"error: {reason}", "files": n} for reason, n in summary["errors_by_reason"].items()]
    table.append({"label": "total", "files": summary["files"]})
    res = summary["results"]
    description = (
        f"Batch `{summary['batch_id']}` from `{summary['source']}` scored with model "
        f"`{summary['model_version']}` (threshold {summary['threshold']:.4g}). "
        f"{summary['scored_this_run']} scored in this run, {summary['reused_this_run']} reused.\n\n"
        f"Results: `{res['csv']}`, `{res['jsonl']}`; summary: `{res['summary']}`."
    )
    caveat = summary.get("model_caveat")
    if caveat:  # a demo-data or reals-only model: its verdicts say so here too
        description = f"**Warning: {caveat['message']}** {caveat['hint']}\n\n" + description
    create_table_artifact(table=table, key=key, description=description)
    return key


@task(name="publish-inbox-summary", cache_policy=NO_CACHE)
def publish_inbox_table(rows: list[dict[str, Any]]) -> str:
    """Publish the inbox poll's folder states (:meth:`dfd.inbox.FolderState.table_row`) as a table artifact
    (key ``score-inbox``)."""
    table = rows or [{"name": "(none)", "ready": False, "due": False, "reason": "inbox has no folders", "files": 0}]
    create_table_artifact(table=table, key="score-inbox", description="Inbox folders seen by the last poll.")
    return "score-inbox"
