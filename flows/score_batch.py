"""The batch-scoring flows: ``score-folder`` classifies every image of one folder, ``score-inbox`` every ready
inbox folder (each one as ``score-folder`` does it, with the listing the inbox poll already made).

Command line (also installed as ``dfd-score``)::

    python -m flows.score_batch PATH [--model-version V] [--batch-size N]        # the score-folder flow
    python -m flows.score_batch --inbox [--inbox-url URL] [--quiet-seconds S]    # the score-inbox flow
    ... [--workers N | --dask-address tcp://HOST:8786] [--shard-files N]          # on Dask (docs/SCALING.md)

``PATH`` is a local folder or ``s3://bucket/prefix``. Results go to ``<ARTIFACTS_URL>/scores/<batch-id>/``
(``results.csv``, ``results.jsonl``, ``summary.json``; see :mod:`dfd.scoring`). A missing folder, an empty
folder or a missing champion model end with a one-line ``error: ...`` and exit status 2; a failure during
the run exits with 1. The command line is :func:`dfd.cli.score`: options, folder and model are checked
before Prefect is even imported. The ``score-inbox`` deployment in prefect.yaml runs :func:`score_inbox`
(``flows/score_batch.py:score_inbox``); :func:`score_folder_flow` is the one-folder flow.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from typing import Any

if __name__ == "__main__":  # python -m flows.score_batch: arguments and inputs are checked before Prefect starts
    from dfd.cli import score as _command

    raise SystemExit(_command())

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.utilities.annotations import quote  # noqa: E402

from dfd.inbox import FolderState  # noqa: E402
from dfd.notify import flow_failure_hook, notify  # noqa: E402
from dfd.registry import RegistryError  # noqa: E402
from dfd.scoring import ScoringError, format_summary  # noqa: E402
from dfd.settings import Settings  # noqa: E402
from dfd.storage import StorageError  # noqa: E402
from flows import ephemeral  # noqa: E402
from tasks.scoring import (  # noqa: E402
    find_ready_batches,
    merge_shards_task,
    plan_shards_task,
    publish_inbox_table,
    publish_summary,
    score_folder_task,
    score_shard_task,
)

# Every scoring flow reports a failed or crashed run to the webhook (off unless configured) where no server exists;
# on a server the alert automations do (deployments/automations.yaml).
_HOOKS: dict[str, Any] = {"on_failure": [flow_failure_hook], "on_crashed": [flow_failure_hook]}


def _when() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M}"


def _folder_run_name() -> str:
    """A readable run name for Prefect's UI, e.g. ``score batch-7 2026-11-24 02:05``."""
    path = str((flow_run.parameters or {}).get("path") or "?").rstrip("/")
    return f"score {path.rsplit('/', 1)[-1] or path} {_when()}"


def _inbox_run_name() -> str:
    return f"score inbox {_when()}"


def _settings(**overrides: Any) -> Settings:
    return Settings.from_env(**overrides)


def _notify_unreadable(settings: Settings, summary: dict[str, Any]) -> None:
    """Tell the webhook (off unless configured) that a batch held files that could not be read."""
    errors = summary.get("counts", {}).get("error", 0)
    if errors:
        notify(settings.webhook_url,
               f"score-batch: {errors} file(s) of batch {summary['batch_id']} could not be read",
               source=summary.get("source"), reasons=summary.get("errors_by_reason"))


def _dask_runner(settings: Settings) -> Any:
    """prefect-dask's task runner for this run: the existing cluster at ``dask_address``, else a temporary
    local cluster of ``score_workers`` worker processes (one thread each: a worker's TensorFlow and tf.data
    use the cores themselves)."""
    from prefect_dask import DaskTaskRunner

    if settings.dask_address.strip():
        return DaskTaskRunner(address=settings.dask_address.strip())
    return DaskTaskRunner(cluster_kwargs={"n_workers": settings.score_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None})


def _score_on_dask(url: str, settings: Settings, model_version: str | None, batch_id: str | None = None,
                   scan: Any = None) -> dict[str, Any]:
    """The Dask engine: plan the shards here (the one listing), score them on the cluster's workers, then
    merge and write the results here, with the single-process path's writer (:mod:`dfd.scoring.shards`)."""
    batch, jobs, threshold = plan_shards_task(url, settings, model_version, batch_id, quote(scan))
    started = time.monotonic()
    results = []
    if jobs:
        with _dask_runner(settings) as runner:
            futures = [runner.submit(score_shard_task, {"job": job}) for job in jobs]
            results = [future.result() for future in futures]
    return merge_shards_task(quote(batch), quote(results), threshold, settings, time.monotonic() - started)


def _score_and_publish(url: str, settings: Settings, model_version: str | None,
                       state: FolderState | None = None) -> dict[str, Any]:
    """Score one folder, publish its summary as an artifact, tell the webhook about unreadable files: the
    recipe of ``score-folder``, run by ``score-inbox`` for each due folder with the poll's ``state`` (its batch
    id and listing: the folder is not listed again). The folder is scored in this process, or in shards on a
    Dask cluster when ``settings`` name one (``score_workers`` or ``dask_address``)."""
    if settings.score_workers or settings.dask_address.strip():
        summary = _score_on_dask(url, settings, model_version, *((state.batch_id, state.scan) if state else ()))
    elif state is None:
        summary = score_folder_task(url, settings, model_version)
    else:  # quote: Prefect passes the listing on as it is, without walking its (many) entries
        summary = score_folder_task(url, settings, model_version, batch_id=state.batch_id, scan=quote(state.scan))
    publish_summary(summary)
    _notify_unreadable(settings, summary)
    get_run_logger().info("%s", format_summary(summary))
    return summary


@flow(name="score-folder", flow_run_name=_folder_run_name, **_HOOKS)
def score_folder_flow(
    path: str,
    model_version: str | None = None,
    batch_size: int | None = None,
    artifacts_url: str | None = None,
    inbox_url: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    shard_files: int | None = None,
) -> dict[str, Any]:
    """Score the folder ``path``; returns the batch summary. ``model_version`` defaults to the champion;
    ``batch_size``, ``artifacts_url`` and ``inbox_url`` (a folder directly inside it keeps its name as batch
    id) default to the settings, and so does the engine: ``workers`` N > 0 scores on a local Dask cluster of N
    worker processes, ``dask_address`` on an existing Dask cluster, in shards of ``shard_files`` files."""
    settings = _settings(artifacts_url=artifacts_url, inbox_url=inbox_url, score_batch_size=batch_size,
                         score_workers=workers, dask_address=dask_address, score_shard_files=shard_files)
    return _score_and_publish(path, settings, model_version)


@flow(name="score-inbox", flow_run_name=_inbox_run_name, **_HOOKS)
def score_inbox(
    model_version: str | None = None,
    batch_size: int | None = None,
    artifacts_url: str | None = None,
    inbox_url: str | None = None,
    quiet_seconds: float | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    shard_files: int | None = None,
) -> list[dict[str, Any]]:
    """Score every ready inbox folder that is not yet scored as it is; returns their summaries.

    A folder that fails does not stop the others (unless there is no model: then all would fail); the run
    fails at the end, naming them. Parameters default to the settings, the model to the champion;
    ``workers``, ``dask_address`` and ``shard_files`` choose the engine as in ``score-folder``.
    """
    logger = get_run_logger()
    settings = _settings(artifacts_url=artifacts_url, inbox_url=inbox_url, quiet_seconds=quiet_seconds,
                         score_batch_size=batch_size, score_workers=workers, dask_address=dask_address,
                         score_shard_files=shard_files)
    states = find_ready_batches(settings)
    publish_inbox_table([s.table_row() for s in states])
    due = [s for s in states if s.due]
    summaries: list[dict[str, Any]] = []
    failures: list[str] = []
    for state in due:
        try:
            summaries.append(_score_and_publish(state.url, settings, model_version, state))
        except (RegistryError, ScoringError, StorageError) as exc:
            logger.error("inbox folder %s failed: %s", state.name, exc)
            failures.append(f"{state.name}: {exc}")
            if isinstance(exc, RegistryError):
                break  # no model: every other folder would fail the same way
    if not due:
        logger.info("inbox %s: nothing to score", settings.inbox_url)
    if failures:
        raise RuntimeError(f"{len(failures)} inbox folder(s) failed: " + "; ".join(failures))
    return summaries


def main(argv: list[str] | None = None) -> int:
    """``dfd-score``: score a folder (or the inbox) once and print the summary (see :func:`dfd.cli.score`)."""
    from dfd.cli import score as command

    return command(argv)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """The command's run, once :func:`dfd.cli.score` has checked the inputs: a flow, then the summaries."""
    ephemeral.prepare()
    common = {"model_version": args.model_version, "batch_size": args.batch_size,
              "artifacts_url": settings.artifacts_url, "inbox_url": settings.inbox_url,
              "workers": settings.score_workers, "dask_address": settings.dask_address,
              "shard_files": settings.score_shard_files}
    try:
        if args.inbox:
            summaries = score_inbox(**common, quiet_seconds=args.quiet_seconds)
        else:
            summaries = [score_folder_flow(path=args.path, **common)]
    except (ScoringError, RegistryError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the flow already logged the traceback
        print(f"error: scoring failed: {exc}", file=sys.stderr)
        return 1
    if args.inbox and not summaries:
        print(f"inbox {settings.inbox_url}: nothing to score")
    for summary in summaries:
        print(format_summary(summary))
    return 0
