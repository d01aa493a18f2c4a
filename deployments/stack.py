"""Start and stop the local stack: Prefect server, work pool, deployments, a worker, the inbox watch
(``flows/inbox_check.py``: starts ``score-inbox`` when a folder is due) and the viewer.

    python -m deployments.stack up        # start everything, wait until healthy, print the URLs
    python -m deployments.stack status    # what is running
    python -m deployments.stack next      # the next scheduled runs of each deployment
    python -m deployments.stack down      # stop everything ``up`` started

Everything lives under ``.stack/`` in the repo: ``prefect-home/`` (the server's own PREFECT_HOME and
SQLite database), ``logs/*.log`` and ``pids.json`` (the process ids ``down`` stops). Processes are started
in their own process groups, so ``down`` also stops the flow-run processes a worker spawned.

With ``PREFECT_API_URL`` set in the environment, no local server is started: the pool, the deployments and
the worker go to that server instead (``DFD_WORK_POOL`` / ``DFD_WORK_POOL_TYPE`` choose the pool). With
``DFD_ALERT_URL`` set, the alerts of ``deployments/automations.yaml`` are created too (see ``deploy.py``).

Why the server is started and stopped here, not with ``prefect server start --background`` / ``prefect server
stop`` (Prefect 3.9):

* start: ``--background`` pipes the server's output to a pipe nobody reads (no ``logs/server.log`` to tell why
  it failed) and returns before the server is healthy, so ``up`` would still spawn, log and wait itself;
* stop: ``prefect server stop`` sends one SIGTERM to the pid in its pid file and returns at once, while ``down``
  must also stop the worker, the viewer and the flow runs they spawned (process groups) and wait until each
  is gone (so the port is free for the next ``up``), and the worker needs a second signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deployments.config import REPO_ROOT, schedule_settings, work_pool, work_pool_type
from deployments.deploy import (
    PREFECT,
    StackError,
    deploy_all,
    ensure_alerts,
    ensure_work_pool,
    is_healthy,
    offline_env,
    run_cli,
    wait_healthy,
)

STACK_DIR = REPO_ROOT / ".stack"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200
DEFAULT_VIEWER_PORT = 8000
# Stop order: the inbox watch and the worker first (no new runs), then the viewer, then the server.
STOP_ORDER = ("inbox-watch", "worker", "viewer", "server")


def _pids_file(stack_dir: Path) -> Path:
    return stack_dir / "pids.json"


def read_state(stack_dir: Path = STACK_DIR) -> dict[str, Any]:
    """The recorded state of the stack (empty when nothing was started)."""
    try:
        return json.loads(_pids_file(stack_dir).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(stack_dir: Path, state: dict[str, Any]) -> None:
    tmp = _pids_file(stack_dir).with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, _pids_file(stack_dir))


def alive(pid: int | None) -> bool:
    """``True`` while a process with this id exists (and is not a zombie we already reaped)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _spawn(name: str, cmd: list[str], env: dict[str, str], stack_dir: Path,
           cwd: Path = REPO_ROOT) -> subprocess.Popen:
    logs = stack_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it open
    log.write(f"\n=== {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
    log.flush()
    return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def viewer_command() -> list[str] | None:
    """How to start the viewer (``python -m app``), or ``None`` when this checkout has no viewer."""
    if (REPO_ROOT / "app" / "__main__.py").exists():
        return [sys.executable, "-m", "app"]
    return None


def up(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, viewer_port: int = DEFAULT_VIEWER_PORT,
       stack_dir: Path = STACK_DIR, with_viewer: bool = True, with_worker: bool = True,
       out=print) -> dict[str, Any]:
    """Bring the stack up; returns the recorded state (pids, URLs, timings)."""
    stack_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(stack_dir)
    running = {k: v for k, v in state.get("pids", {}).items() if alive(v)}
    if running:
        out(f"stack already running ({', '.join(running)}); `python -m deployments.stack down` first")
        _print_urls(state, out)
        return state

    t0 = time.monotonic()
    remote = os.environ.get("PREFECT_API_URL", "").strip()
    env = offline_env()
    state = {"started_at": datetime.now(UTC).isoformat(), "pids": {}, "stack_dir": str(stack_dir)}
    if remote:
        api_url = remote.rstrip("/")
        out(f"using the Prefect server at {api_url} (PREFECT_API_URL is set)")
    else:
        api_url = f"http://{host}:{port}/api"
        if is_healthy(api_url):
            raise StackError(f"something already answers on {api_url}; stop it or use --port")
        home = stack_dir / "prefect-home"
        home.mkdir(parents=True, exist_ok=True)
        env["PREFECT_HOME"] = str(home)
        env["PREFECT_API_URL"] = api_url
        env.pop("PREFECT_PROFILES_PATH", None)
        server_env = dict(env)
        server_env.pop("PREFECT_API_URL")
        server = _spawn("server", PREFECT + ["server", "start", "--host", host, "--port", str(port)],
                        server_env, stack_dir)
        state["pids"]["server"] = server.pid
        _write_state(stack_dir, state)
        out(f"starting Prefect server (pid {server.pid}), PREFECT_HOME={home}")
        try:
            wait_healthy(api_url, timeout=180, proc=server)
        except StackError:
            down(stack_dir, out=out)
            raise
        state["server_healthy_s"] = round(time.monotonic() - t0, 1)
        out(f"server healthy after {state['server_healthy_s']} s")
    state["api_url"] = api_url
    state["ui_url"] = api_url[: -len("/api")] if api_url.endswith("/api") else api_url
    env["PREFECT_API_URL"] = api_url
    env.setdefault("DFD_REPO_DIR", str(REPO_ROOT))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    _write_state(stack_dir, state)

    try:
        pool = work_pool(env)
        created = ensure_work_pool(env, pool)
        out(f"work pool {pool!r} ({work_pool_type(env)}): {'created' if created else 'exists'}")
        deploy_all(env, pool)
        out("deployments registered: " + ", ".join(_deployment_names(env)))
        ensure_alerts(env, out=out)

        if with_viewer and viewer_command() is not None:  # retrain runs link their plots to the stack's viewer
            env.setdefault("VIEWER_URL", f"http://{host}:{viewer_port}")
        if with_worker:
            worker = _spawn("worker", PREFECT + ["worker", "start", "--pool", pool, "--name", "dfd-local-worker"],
                            env, stack_dir)
            state["pids"]["worker"] = worker.pid
            _write_state(stack_dir, state)
            out(f"worker started (pid {worker.pid}) on pool {pool!r}")
            every = schedule_settings(env)["inbox_interval"]  # the light inbox check: starts score-inbox when due
            watch = _spawn("inbox-watch", [sys.executable, "-m", "flows.inbox_check", "--every", str(every)], env,
                           stack_dir)
            state["pids"]["inbox-watch"] = watch.pid
            _write_state(stack_dir, state)
            out(f"inbox watch started (pid {watch.pid}): checks the inbox every {every} s")
        else:
            out(f"worker: skipped; start one where pool {pool!r} should run: prefect worker start --pool {pool}")

        command = viewer_command() if with_viewer else None
        if command is None:
            out("viewer: skipped" + ("" if not with_viewer else " (no app/__main__.py in this checkout)"))
        else:
            viewer_env = dict(env)
            viewer_env.setdefault("VIEWER_HOST", host)
            viewer_env.setdefault("VIEWER_PORT", str(viewer_port))
            viewer = _spawn("viewer", command, viewer_env, stack_dir)
            state["pids"]["viewer"] = viewer.pid
            state["viewer_url"] = f"http://{viewer_env['VIEWER_HOST']}:{viewer_env['VIEWER_PORT']}/"
            _write_state(stack_dir, state)
            if _wait_http(state["viewer_url"], timeout=60, proc=viewer):
                out(f"viewer started (pid {viewer.pid})")
            else:
                out(f"viewer did not answer on {state['viewer_url']} yet; see {stack_dir}/logs/viewer.log")
    except Exception:
        out("start-up failed; stopping what was started")
        down(stack_dir, out=out)
        raise
    state["ready_s"] = round(time.monotonic() - t0, 1)
    _write_state(stack_dir, state)
    out(f"stack ready after {state['ready_s']} s")
    _print_urls(state, out)
    return state


def _deployment_names(env: dict[str, str]) -> list[str]:
    proc = run_cli(["deployment", "ls"], env, check=False)
    names = [line.split("│")[1].strip() for line in proc.stdout.splitlines()
             if line.count("│") >= 3 and "/" in line.split("│")[1]]
    return names or ["(see `prefect deployment ls`)"]


def _wait_http(url: str, timeout: float, proc: subprocess.Popen) -> bool:
    import urllib.error
    import urllib.request

    start = time.monotonic()
    while time.monotonic() - start < timeout and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answers, even if not with 200
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False


def _print_urls(state: dict[str, Any], out) -> None:
    if state.get("ui_url"):
        out(f"  Prefect UI:  {state['ui_url']}")
        out(f"  Prefect API: {state['api_url']}   (export PREFECT_API_URL={state['api_url']})")
    if state.get("viewer_url"):
        out(f"  Viewer:      {state['viewer_url']}")
    out(f"  Logs:        {state.get('stack_dir', STACK_DIR)}/logs/")


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child was started as a session leader: its group id is its pid
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def stop_process(name: str, pid: int, grace: float = 20.0, out=print) -> None:
    """SIGTERM the process group (twice for the worker, which ignores the first), SIGKILL after ``grace``."""
    if not alive(pid):
        return
    _signal_group(pid, signal.SIGTERM)
    if name == "worker":
        time.sleep(1.0)
        if alive(pid):
            _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.25)
    if alive(pid):
        out(f"{name} (pid {pid}) did not stop after {grace:.0f} s; killing it")
        _signal_group(pid, signal.SIGKILL)
        time.sleep(0.5)
    # anything left in the group (for example a flow run the worker spawned)
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return
    _signal_group(pid, signal.SIGKILL)


def down(stack_dir: Path = STACK_DIR, out=print) -> list[str]:
    """Stop every process ``up`` recorded; returns the names stopped."""
    state = read_state(stack_dir)
    pids: dict[str, int] = state.get("pids", {})
    stopped = []
    for name in sorted(pids, key=lambda n: STOP_ORDER.index(n) if n in STOP_ORDER else -1):
        pid = pids[name]
        if alive(pid):
            stop_process(name, pid, out=out)
            stopped.append(name)
            out(f"stopped {name} (pid {pid})")
    if state:
        state["pids"] = {}
        state["stopped_at"] = datetime.now(UTC).isoformat()
        _write_state(stack_dir, state)
    if not stopped:
        out("nothing was running")
    return stopped


def status(stack_dir: Path = STACK_DIR, out=print) -> dict[str, bool]:
    """Which recorded processes are alive, and whether the API answers."""
    state = read_state(stack_dir)
    result = {name: alive(pid) for name, pid in state.get("pids", {}).items()}
    for name, ok in result.items():
        out(f"{name:7s} pid {state['pids'][name]}: {'running' if ok else 'not running'}")
    if state.get("api_url"):
        out(f"api {state['api_url']}: {'healthy' if is_healthy(state['api_url']) else 'not answering'}")
    if not result:
        out("nothing recorded in " + str(_pids_file(stack_dir)))
    return result


def next_runs(stack_dir: Path = STACK_DIR, per_deployment: int = 3, out=print) -> dict[str, list[str]]:
    """Print the next scheduled runs of every deployment (expected start, UTC and schedule time zone)."""
    from zoneinfo import ZoneInfo

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = os.environ.get("PREFECT_API_URL") or read_state(stack_dir).get("api_url")
    if not api_url:
        raise StackError("no PREFECT_API_URL and no stack recorded in " + str(stack_dir))
    result: dict[str, list[str]] = {}
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for d in client.read_deployments():
            flow_name = client.read_flow(d.flow_id).name
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=per_deployment)
            schedules = "; ".join(
                (f"cron {s.schedule.cron!r} {s.schedule.timezone}" if getattr(s.schedule, "cron", None)
                 else f"every {s.schedule.interval.total_seconds():.0f} s" if getattr(s.schedule, "interval", None)
                 else str(s.schedule)) + ("" if s.active else " (paused)")
                for s in d.schedules) or "no schedule"
            tz = next((s.schedule.timezone for s in d.schedules if getattr(s.schedule, "timezone", None)), "UTC")
            out(f"{flow_name}/{d.name}  [{schedules}]")
            lines = []
            for run in runs:
                when = run.expected_start_time
                lines.append(f"{when:%Y-%m-%d %H:%M:%S} UTC  ({when.astimezone(ZoneInfo(tz)):%H:%M %Z})  "
                             f"{run.name}")
                out("    next: " + lines[-1])
            result[f"{flow_name}/{d.name}"] = lines
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.stack", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "next"])
    parser.add_argument("--host", default=os.environ.get("DFD_STACK_HOST", DEFAULT_HOST))
    parser.add_argument("--port", type=int, default=int(os.environ.get("DFD_STACK_PORT", DEFAULT_PORT)))
    parser.add_argument("--viewer-port", type=int,
                        default=int(os.environ.get("VIEWER_PORT", DEFAULT_VIEWER_PORT)))
    parser.add_argument("--no-viewer", action="store_true", help="do not start the viewer")
    parser.add_argument("--no-worker", action="store_true",
                        help="do not start a local worker (for a pool whose workers run elsewhere)")
    parser.add_argument("--stack-dir", type=Path, default=Path(os.environ.get("DFD_STACK_DIR", STACK_DIR)))
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.host, args.port, args.viewer_port, args.stack_dir.resolve(), not args.no_viewer,
               not args.no_worker)
        elif args.command == "down":
            down(args.stack_dir.resolve())
        elif args.command == "next":
            next_runs(args.stack_dir.resolve())
        else:
            status(args.stack_dir.resolve())
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
