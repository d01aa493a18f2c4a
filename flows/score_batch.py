"""The ``score-batch`` flow: classify every image of a folder (or of every ready inbox folder).

Command line (also installed as ``dfd-score``)::

    python -m flows.score_batch PATH [--model-version V] [--batch-size N]
    python -m flows.score_batch --inbox [--inbox-url URL] [--quiet-seconds S]

``PATH`` is a local folder or ``s3://bucket/prefix``. Results go to ``<ARTIFACTS_URL>/scores/<batch-id>/``
(``results.csv``, ``results.jsonl``, ``summary.json``; see :mod:`dfd.scoring`). A missing folder, an empty
folder or a missing champion model end with a one-line ``error: ...`` and exit status 2; a failure during
the run exits with 1. The command line is :func:`dfd.cli.score`: options, folder and model are checked
before Prefect is even imported.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

if __name__ == "__main__":  # python -m flows.score_batch: arguments and inputs are checked before Prefect starts
    from dfd.cli import score as _command

    raise SystemExit(_command())

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from dfd.notify import flow_failure_hook, notify  # noqa: E402
from dfd.registry import RegistryError  # noqa: E402
from dfd.scoring import ScoringError, format_summary  # noqa: E402
from dfd.settings import Settings  # noqa: E402
from dfd.storage import StorageError  # noqa: E402
from flows import ephemeral  # noqa: E402
from tasks.scoring import (  # noqa: E402
    find_ready_batches,
    publish_inbox_table,
    publish_summary,
    score_folder_task,
)


def _run_name() -> str:
    """A readable run name for Prefect's UI, e.g. ``score inbox 2026-11-24 02:05``."""
    params = flow_run.parameters or {}
    when = f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
    if params.get("inbox"):
        return f"score inbox {when}"
    path = str(params.get("path") or "?").rstrip("/")
    return f"score {path.rsplit('/', 1)[-1] or path} {when}"


def _settings(**overrides: Any) -> Settings:
    return Settings.from_env(**overrides)


def _notify_unreadable(settings: Settings, summary: dict[str, Any]) -> None:
    """Tell the webhook (off unless configured) that a batch held files that could not be read."""
    errors = summary.get("counts", {}).get("error", 0)
    if errors:
        notify(settings.webhook_url,
               f"score-batch: {errors} file(s) of batch {summary['batch_id']} could not be read",
               source=summary.get("source"), reasons=summary.get("errors_by_reason"))


@flow(name="score-batch", flow_run_name=_run_name, on_failure=[flow_failure_hook], on_crashed=[flow_failure_hook])
def score_batch(
    path: str | None = None,
    model_version: str | None = None,
    batch_size: int | None = None,
    inbox: bool = False,
    artifacts_url: str | None = None,
    inbox_url: str | None = None,
    quiet_seconds: float | None = None,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Score the folder ``path``, or, with ``inbox=True``, every ready and not yet scored inbox folder.

    Returns the batch summary (a list of them in inbox mode). ``model_version`` defaults to the champion;
    ``batch_size``, ``artifacts_url``, ``inbox_url`` and ``quiet_seconds`` default to the settings.
    """
    logger = get_run_logger()
    settings = _settings(
        artifacts_url=artifacts_url,
        inbox_url=inbox_url,
        quiet_seconds=quiet_seconds,
        score_batch_size=batch_size,
    )
    if not inbox:
        if not path:
            raise ScoringError("no folder to score: give a path, or inbox=True")
        summary = score_folder_task(path, settings, model_version)
        publish_summary(summary)
        _notify_unreadable(settings, summary)
        logger.info("%s", format_summary(summary))
        return summary

    rows = find_ready_batches(settings)
    publish_inbox_table(rows)
    summaries: list[dict[str, Any]] = []
    failures: list[str] = []
    for row in (r for r in rows if r["due"]):
        try:
            summary = score_folder_task(row["url"], settings, model_version, batch_id=row["batch_id"])
        except (RegistryError, ScoringError, StorageError) as exc:
            logger.error("inbox folder %s failed: %s", row["name"], exc)
            failures.append(f"{row['name']}: {exc}")
            if isinstance(exc, RegistryError):
                break  # no model: every other folder would fail the same way
            continue
        publish_summary(summary)
        _notify_unreadable(settings, summary)
        logger.info("%s", format_summary(summary))
        summaries.append(summary)
    if not any(r["due"] for r in rows):
        logger.info("inbox %s: nothing to score", settings.inbox_url)
    if failures:
        raise RuntimeError(f"{len(failures)} inbox folder(s) failed: " + "; ".join(failures))
    return summaries


def main(argv: list[str] | None = None) -> int:
    """``dfd-score``: score a folder (or the inbox) once and print the summary (see :func:`dfd.cli.score`)."""
    from dfd.cli import score as command

    return command(argv)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    """The command's run, once :func:`dfd.cli.score` has checked the inputs: the flow, then the summaries."""
    ephemeral.prepare()
    try:
        result = score_batch(
            path=args.path,
            model_version=args.model_version,
            batch_size=args.batch_size,
            inbox=args.inbox,
            artifacts_url=settings.artifacts_url,
            inbox_url=settings.inbox_url,
            quiet_seconds=args.quiet_seconds,
        )
    except (ScoringError, RegistryError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the flow already logged the traceback
        print(f"error: scoring failed: {exc}", file=sys.stderr)
        return 1
    summaries = result if isinstance(result, list) else [result]
    if args.inbox and not summaries:
        print(f"inbox {settings.inbox_url}: nothing to score")
    for summary in summaries:
        print(format_summary(summary))
    return 0
