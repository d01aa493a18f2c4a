"""Deployment settings: the defaults in ``prefect.yaml`` (``definitions.defaults``), overridden by the environment.

``prefect.yaml`` calls :func:`deploy_settings` as a build step (``id: cfg``) so that a plain
``prefect --no-prompt deploy --all`` works with no environment at all, while every value can still be
overridden at deploy time:

===========================  ==================  ====================================================
environment variable         default (the file)  meaning
===========================  ==================  ====================================================
``RETRAIN_CRON``             ``0 2 * * *``       cron of ``retrain-nightly``
``RETRAIN_TIMEZONE``         ``UTC``             IANA time zone the cron is read in
``SCORE_INBOX_INTERVAL``     ``300``             seconds between checks of the inbox watch
``DFD_WORK_POOL``            each its own        one work pool both deployments are sent to instead
``DFD_WORK_POOL_TYPE``       ``process``         type of the pool the stack creates if it is missing
``DFD_REPO_DIR``             the deploy's cwd    folder the worker changes into before a run (pull step)
``DFD_ALERT_URL``            (off)               Apprise URL the alert automations notify (never in a file)
===========================  ==================  ====================================================

Placement: ``prefect.yaml`` names each deployment's work pool (``retrain_work_pool``, ``score_work_pool``;
:func:`deployment_pools`), so retraining and scoring can run on different machines; ``DFD_WORK_POOL`` sends
both to one pool.

Cron and time zone are checked by Prefect's own ``CronSchedule`` (what the server will accept), with a one-line
error naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO_ROOT / "prefect.yaml"


def file_defaults(prefect_file: Path = PREFECT_FILE) -> dict[str, Any]:
    """The defaults written once in ``prefect.yaml`` under ``definitions.defaults``."""
    import yaml

    defaults = (yaml.safe_load(prefect_file.read_text()).get("definitions") or {}).get("defaults") or {}
    missing = {"retrain_cron", "timezone", "inbox_interval", "work_pool", "work_pool_type", "retrain_work_pool",
               "score_work_pool"} - set(defaults)
    if missing:
        raise ValueError(f"{prefect_file}: definitions.defaults lacks {sorted(missing)}")
    return defaults


_DEFAULTS = file_defaults()
DEFAULT_RETRAIN_CRON = str(_DEFAULTS["retrain_cron"])
DEFAULT_TIMEZONE = str(_DEFAULTS["timezone"])
DEFAULT_INBOX_INTERVAL_S = int(_DEFAULTS["inbox_interval"])
DEFAULT_WORK_POOL = str(_DEFAULTS["work_pool"])
DEFAULT_WORK_POOL_TYPE = str(_DEFAULTS["work_pool_type"])

DEPLOYMENT_NAMES = ("retrain/retrain-nightly", "score-inbox/score-inbox")
# Placement: each deployment's own work pool, as prefect.yaml names it (retraining and scoring may differ).
DEFAULT_DEPLOYMENT_POOLS = dict(zip(DEPLOYMENT_NAMES, (str(_DEFAULTS["retrain_work_pool"]),
                                                       str(_DEFAULTS["score_work_pool"])), strict=True))


class ConfigError(ValueError):
    """A deployment setting from the environment cannot be used."""


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value or default


def work_pool(env: Mapping[str, str] | None = None) -> str:
    """The work pool name (``DFD_WORK_POOL``)."""
    return _get(os.environ if env is None else env, "DFD_WORK_POOL", DEFAULT_WORK_POOL)


def deployment_pools(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The work pool of each deployment: the one ``prefect.yaml`` names for it, or ``DFD_WORK_POOL`` for both."""
    env = os.environ if env is None else env
    one = _get(env, "DFD_WORK_POOL", "")
    return {name: one or pool for name, pool in DEFAULT_DEPLOYMENT_POOLS.items()}


def work_pool_type(env: Mapping[str, str] | None = None) -> str:
    """The work pool type the stack creates (``DFD_WORK_POOL_TYPE``)."""
    return _get(os.environ if env is None else env, "DFD_WORK_POOL_TYPE", DEFAULT_WORK_POOL_TYPE)


def schedule_settings(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Cron, time zone and polling interval, validated so a typo fails at deploy time, not at 02:00."""
    env = os.environ if env is None else env
    from prefect.client.schemas.schedules import CronSchedule  # the server's own check of cron and zone
    from pydantic import ValidationError

    cron = _get(env, "RETRAIN_CRON", DEFAULT_RETRAIN_CRON)
    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ConfigError(f"RETRAIN_CRON is not a cron expression: {cron!r}") from None
    timezone = _get(env, "RETRAIN_TIMEZONE", DEFAULT_TIMEZONE)
    try:
        CronSchedule(cron=cron, timezone=timezone)
    except ValidationError:
        raise ConfigError(f"RETRAIN_TIMEZONE is not a known time zone (IANA name): {timezone!r}") from None
    raw_interval = _get(env, "SCORE_INBOX_INTERVAL", str(DEFAULT_INBOX_INTERVAL_S))
    try:
        interval = int(float(raw_interval))
    except ValueError:
        raise ConfigError(f"SCORE_INBOX_INTERVAL is not a number of seconds: {raw_interval!r}") from None
    if interval < 10:
        raise ConfigError("SCORE_INBOX_INTERVAL must be at least 10 seconds")
    return {"retrain_cron": cron, "timezone": timezone, "inbox_interval": interval}


def deploy_settings(**_: Any) -> dict[str, Any]:
    """Prefect build step: the values ``prefect.yaml`` templates in as ``{{ cfg.<key> }}``."""
    values = schedule_settings()
    values["repo_dir"] = str(Path(_get(os.environ, "DFD_REPO_DIR", os.getcwd())).resolve())
    return values
