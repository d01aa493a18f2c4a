"""The inbox watch: decide, without Prefect or TensorFlow, whether an inbox folder is due, and only then start a
run of the ``score-inbox`` deployment.

    python -m flows.inbox_check                    # one check (e.g. from cron); exit status 0
    python -m flows.inbox_check --every 300        # check every 300 s until stopped (what the stack runs)

A check lists the inbox (:func:`dfd.inbox.settings_states`: listings and the batches' ``summary.json``; no
model, no Prefect). When nothing is due it ends there: no flow run, nothing in Prefect's UI, a fraction of a
second of CPU (``bench/idle_inbox_check.py``). When a folder is ready and not yet scored as it is, it asks the
Prefect API (``PREFECT_API_URL``) whether a ``score-inbox`` run is already waiting or running (that run scores
it, or a later check starts another) and otherwise starts one with ``run_deployment``. So the ``score-inbox``
run list holds real work only, and a stopped worker does not pile up runs. Prefect is imported only then.

Why not a scheduled Prefect flow: every flow run is a new ``python -m prefect.engine`` process, whose imports
and API calls alone cost 2.5 to 3 s of CPU (measured: an idle ``score-inbox`` run 2.3 to 3.2 s, a minimal
check flow 2.7 to 3.0 s, 11 to 30 s wall on a loaded machine; README) and a run in the UI, 288 times a day.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from dfd.inbox import settings_states
from dfd.settings import Settings, SettingsError

SCORE_DEPLOYMENT = "score-inbox/score-inbox"


def due_folders(settings: Settings) -> list[str]:
    """The inbox folders that are ready and not yet scored as they are (no Prefect, no model)."""
    return [s.name for s in settings_states(settings) if s.due]


def _active_run(client: Any, deployment_id: Any) -> Any | None:
    """A run of the deployment that is waiting for a worker or running, if any."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]))),
        limit=1)
    return runs[0] if runs else None


def start_scoring(deployment: str = SCORE_DEPLOYMENT, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start a run of ``deployment`` unless one is waiting or running: ``{"started": id}`` or ``{"waiting": id}``."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        active = _active_run(client, target.id)
    if active is not None:
        return {"started": None, "waiting": str(active.id), "name": active.name}
    run = run_deployment(deployment, parameters=parameters or {}, timeout=0, as_subflow=False)
    return {"started": str(run.id), "waiting": None, "name": run.name}


def check_once(settings: Settings, deployment: str = SCORE_DEPLOYMENT, parameters: dict[str, Any] | None = None,
               say: Callable[[str], None] = print) -> dict[str, Any]:
    """One check: the due folders and, when there are any, the scoring run started (or already there)."""
    due = due_folders(settings)
    if not due:
        return {"due": [], "started": None, "waiting": None}
    outcome = start_scoring(deployment, parameters)
    verb = "started" if outcome["started"] else "already waiting or running:"
    say(f"due: {', '.join(due)}; {verb} {outcome['name']} ({deployment})")
    return {"due": due, "started": outcome["started"], "waiting": outcome["waiting"]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flows.inbox_check", allow_abbrev=False,
                                description="Check the inbox; start a score-inbox run only when a folder is due.")
    p.add_argument("--every", type=float, metavar="S",
                   help="check every S seconds until stopped (default: check once and exit)")
    p.add_argument("--deployment", default=SCORE_DEPLOYMENT, metavar="FLOW/NAME",
                   help="the scoring deployment to start (default: %(default)s)")
    p.add_argument("--inbox-url", metavar="DIR|s3://...", help="inbox (default: $INBOX_URL or data/inbox)")
    p.add_argument("--artifacts", metavar="DIR|s3://...", help="artifact store (default: $ARTIFACTS_URL or artifacts)")
    p.add_argument("--quiet-seconds", type=float, metavar="S",
                   help="seconds without change that make a folder ready (default: $DFD_QUIET_SECONDS or 60)")
    return p


def main(argv: list[str] | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    """``python -m flows.inbox_check``: one check, or one every ``--every`` seconds. A failed check (storage or
    API down) is reported in one line and, when watching, tried again at the next tick."""
    args = parser().parse_args(argv)
    given = {"inbox_url": args.inbox_url, "artifacts_url": args.artifacts, "quiet_seconds": args.quiet_seconds}
    try:
        settings = Settings.from_env(**given)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parameters = {k: v for k, v in given.items() if v is not None}  # passed on to the scoring run
    while True:
        try:
            check_once(settings, args.deployment, parameters, say=lambda line: print(line, flush=True))
        except Exception as exc:  # noqa: BLE001 - storage or the Prefect API down: try again at the next tick
            print(f"inbox check failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            if args.every is None:
                return 1
        if args.every is None:
            return 0
        sleep(args.every)


if __name__ == "__main__":
    raise SystemExit(main())
