"""Thin wrappers around the ``prefect`` command line: health check, work pool, deploy; plus the alerts
(a notification block and automations from ``deployments/automations.yaml``), made with Prefect's client.

They shell out on purpose: ``prefect --no-prompt deploy --all`` is exactly what an operator runs by hand,
and the CLI fills in each pool type's default job template.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deployments.config import (
    DEFAULT_INBOX_INTERVAL_S,
    DEFAULT_WORK_POOL,
    REPO_ROOT,
    schedule_settings,
    work_pool,
    work_pool_type,
)

PREFECT = [sys.executable, "-m", "prefect"]


class StackError(RuntimeError):
    """A step of bringing up the stack failed (the message says which, with the command's output)."""


def offline_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) plus the settings that keep Prefect offline."""
    env = dict(os.environ if base is None else base)
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("MPLBACKEND", "Agg")
    env.update(extra)
    return env


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """``True`` when ``<api_url>/health`` answers 200."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(api_url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None) -> float:
    """Poll ``/api/health`` until it answers; returns the seconds waited. Fails fast if ``proc`` exits."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if is_healthy(api_url):
            return time.monotonic() - start
        if proc is not None and proc.poll() is not None:
            raise StackError(f"the Prefect server exited with code {proc.returncode} before it was healthy")
        time.sleep(0.5)
    raise StackError(f"{api_url} was not healthy after {timeout:.0f} s")


def run_cli(args: list[str], env: Mapping[str, str], cwd: Path = REPO_ROOT, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run ``prefect <args>``; on failure raise :class:`StackError` with the tail of its output."""
    proc = subprocess.run(PREFECT + args, env=dict(env), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise StackError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{tail}")
    return proc


def ensure_work_pool(env: Mapping[str, str], name: str | None = None, pool_type: str | None = None) -> bool:
    """Create the work pool unless it exists; ``True`` when it was created now."""
    name = name or work_pool(env)
    pool_type = pool_type or work_pool_type(env)
    inspect = run_cli(["work-pool", "inspect", name], env, check=False)
    if inspect.returncode == 0:
        return False
    run_cli(["work-pool", "create", name, "--type", pool_type], env)
    return True


def patched_prefect_file(source: Path, target: Path, inbox_interval_s: int | None = None,
                         pool: str | None = None) -> Path:
    """Write a copy of ``source`` (a prefect.yaml) with another inbox interval and/or work pool.

    Needed because Prefect validates ``interval`` before it applies templates (so it cannot be
    ``{{ ... }}`` in the file), and ``prefect deploy --all`` ignores ``--pool``.
    """
    import yaml

    config = yaml.safe_load(source.read_text())
    for deployment in config.get("deployments") or []:
        if pool:
            deployment["work_pool"] = {**(deployment.get("work_pool") or {}), "name": pool}
        for schedule in deployment.get("schedules") or []:
            if "interval" in schedule and inbox_interval_s is not None:
                schedule["interval"] = inbox_interval_s
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def deploy_all(env: Mapping[str, str], pool: str | None = None, cwd: Path = REPO_ROOT,
               prefect_file: Path | None = None) -> str:
    """``prefect --no-prompt deploy --all`` from the repo root, on ``pool`` (default ``DFD_WORK_POOL``).

    A work pool or ``SCORE_INBOX_INTERVAL`` (seconds) other than the file's defaults is applied through a
    patched copy of ``prefect.yaml``; cron and time zone are read by the file's own build step.
    """
    import tempfile

    settings = schedule_settings(env)  # fail here, with a clear message, on a bad value
    pool = pool or work_pool(env)
    args = ["--no-prompt", "deploy", "--all"]
    prefect_file = prefect_file or cwd / "prefect.yaml"
    with tempfile.TemporaryDirectory(prefix="dfd-deploy-") as tmp:
        interval = settings["inbox_interval"]
        if interval != DEFAULT_INBOX_INTERVAL_S or pool != DEFAULT_WORK_POOL:
            prefect_file = patched_prefect_file(prefect_file, Path(tmp) / "prefect.yaml",
                                                inbox_interval_s=interval, pool=pool)
        args += ["--prefect-file", str(prefect_file)]
        return run_cli(args, env, cwd=cwd).stdout


AUTOMATIONS_FILE = REPO_ROOT / "deployments" / "automations.yaml"


def load_alerts(path: Path = AUTOMATIONS_FILE) -> dict[str, Any]:
    """The notification block and the automations declared in ``path``, validated by Prefect's own models
    (so a typo fails before anything is created)."""
    import yaml
    from prefect.automations import AutomationCore

    spec = yaml.safe_load(path.read_text())
    block = spec["notification_block"]
    if not {"type", "name", "url_env"} <= set(block):
        raise StackError(f"{path}: notification_block needs type, name and url_env")
    for automation in spec["automations"]:  # validate with a placeholder block id
        AutomationCore.model_validate(_with_block(automation, "00000000-0000-0000-0000-000000000000"))
    return spec


def _with_block(automation: dict[str, Any], block_id: str) -> dict[str, Any]:
    """``automation`` with ``block_document_id`` set on each of its send-notification actions."""
    actions = [{**a, "block_document_id": block_id} if a.get("type") == "send-notification" else a
               for a in automation.get("actions") or []]
    return {**automation, "actions": actions}


def ensure_alerts(env: Mapping[str, str], path: Path = AUTOMATIONS_FILE, out=print) -> dict[str, str]:
    """Create or update (by name) the notification block and the automations of ``path`` on
    ``env["PREFECT_API_URL"]``; returns ``{automation name: "created" | "updated"}``.

    Nothing is created when the block's URL variable (``DFD_ALERT_URL``) is unset: that is said on ``out``.
    Re-running updates in place, so a re-deploy never duplicates an automation or the block.
    """
    spec = load_alerts(path)
    block_spec = spec["notification_block"]
    url = (env.get(block_spec["url_env"]) or "").strip()
    if not url:
        out(f"alerts: off ({block_spec['url_env']} is not set): no notification block or automation created")
        return {}
    from prefect.automations import AutomationCore
    from prefect.blocks.core import Block
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = env.get("PREFECT_API_URL") or os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise StackError("alerts need a Prefect server: PREFECT_API_URL is not set")
    result: dict[str, str] = {}
    with temporary_settings({PREFECT_API_URL: api_url}):
        block_cls = Block.get_block_class_from_key(block_spec["type"])
        extra = {"notify_type": "failure"} if "notify_type" in block_cls.model_fields else {}
        block_id = block_cls(url=url, **extra).save(block_spec["name"], overwrite=True)
        with get_client(sync_client=True) as client:
            for declared in spec["automations"]:
                wanted = AutomationCore.model_validate(_with_block(declared, str(block_id)))
                existing = client.read_automations_by_name(wanted.name)
                if existing:
                    keep, *duplicates = sorted(existing, key=lambda a: str(a.id))
                    client.update_automation(keep.id, wanted)
                    for duplicate in duplicates:  # made by hand or an older deploy: one automation per name
                        client.delete_automation(duplicate.id)
                    result[wanted.name] = "updated"
                else:
                    client.create_automation(wanted)
                    result[wanted.name] = "created"
    out(f"alerts: notification block {block_spec['type']}/{block_spec['name']} ({block_spec['url_env']}); "
        + ", ".join(f"{name} {how}" for name, how in result.items()))
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m deployments.deploy pool|deploy``: create the pool, or deploy, on $PREFECT_API_URL."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deployments.deploy")
    parser.add_argument("command", choices=["pool", "deploy"])
    args = parser.parse_args(argv)
    env = offline_env()
    if args.command == "pool":
        created = ensure_work_pool(env)
        print(f"work pool {work_pool(env)!r} ({work_pool_type(env)}): {'created' if created else 'exists'}")
    else:
        ensure_work_pool(env)
        print(deploy_all(env))
        ensure_alerts(env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
