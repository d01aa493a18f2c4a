"""What one idle inbox check costs: a scheduled flow run (how score-inbox polled before) against the inbox watch.

    python bench/idle_inbox_check.py                 # 3 rounds of each, about 3 minutes on a quiet 2-core machine
    python bench/idle_inbox_check.py --rounds 5

Starts a real ``prefect server`` (own ``PREFECT_HOME``, free loopback port), registers the deployments of the
real ``prefect.yaml`` on a ``process`` pool (schedules paused: only what a check starts is counted) and points
``INBOX_URL`` at an *idle* inbox (one folder already scored, one still being copied: nothing due). Per round:

* ``flow run``: a run of ``score-inbox`` (the flow the 5-minute schedule used to run), executed with the command
  the process worker runs for it, ``/usr/bin/time -v python -m prefect.engine`` (``PREFECT__FLOW_RUN_ID`` set);
* ``watch, one check``: ``/usr/bin/time -v python -m flows.inbox_check``, the inbox watch as cron would run it;
* ``watch, per check``: the CPU of one check inside a running ``--every`` loop (its process already started;
  median of 20 checks, in this process).

It prints user and system CPU seconds, wall seconds and peak RSS, whether TensorFlow (TF) or Prefect (PF) was
imported, and the flow runs each check left in the server (what the UI's run list shows). The machine's load
moves wall time; CPU time (user + sys) is the fair number.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from deployments.deploy import PREFECT, deploy_all, ensure_work_pool, offline_env, wait_healthy  # noqa: E402

POOL = "dfd-bench-pool"
# A sitecustomize that reports, at exit, whether the process imported TensorFlow.
SITECUSTOMIZE = ("import atexit, sys\natexit.register(lambda: print('TF_IMPORTED=%s PF_IMPORTED=%s' % ("
                 "'tensorflow' in sys.modules, 'prefect' in sys.modules), file=sys.stderr))\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _idle_inbox(root: Path, artifacts: Path) -> Path:
    """An inbox where nothing is due: one folder scored already (with its summary), one still being copied."""
    from helpers import make_dataset, publish_tiny_model

    from dfd.scoring import load_predictor, score_folder
    from dfd.storage import open_store

    inbox = root / "inbox"
    publish_tiny_model(artifacts)
    done = make_dataset(inbox / "batch-done", per_class=2, size=32)
    (done / "_READY").write_text("")
    predictor, version = load_predictor(open_store(artifacts), None, root / "work")
    score_folder(str(done), str(artifacts), predictor, version, inbox_url=str(inbox))
    make_dataset(inbox / "batch-copying", per_class=1, size=32)  # fresh, no marker: not ready
    return inbox


def _time_v(stderr: str) -> dict[str, float]:
    """user, sys, wall (s) and peak RSS (MB) from ``/usr/bin/time -v``."""
    def field(name: str) -> str:
        m = re.search(rf"^\s*{re.escape(name)}: (.+)$", stderr, re.M)
        if not m:
            raise RuntimeError(f"/usr/bin/time gave no {name!r}:\n{stderr[-2000:]}")
        return m.group(1).strip()

    wall = [float(x) for x in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")]
    return {"user": float(field("User time (seconds)")), "sys": float(field("System time (seconds)")),
            "wall": sum(v * 60 ** i for i, v in enumerate(reversed(wall))),
            "rss_mb": int(field("Maximum resident set size (kbytes)")) / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dfd-bench-idle-") as tmp:
        root = Path(tmp)
        (root / "site").mkdir()
        (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        port = _free_port()
        api = f"http://127.0.0.1:{port}/api"
        base = offline_env(PREFECT_HOME=str(root / "home"))
        for var in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_API_KEY", "PYTHONPATH"):
            base.pop(var, None)
        log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
        server = subprocess.Popen(PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  env=base, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(api, timeout=180, proc=server)
            artifacts = root / "artifacts"
            inbox = _idle_inbox(root, artifacts)
            env = {**base, "PREFECT_API_URL": api, "INBOX_URL": str(inbox), "ARTIFACTS_URL": str(artifacts),
                   "DFD_WORK_DIR": str(root / "work"), "DFD_QUIET_SECONDS": "3600"}
            ensure_work_pool(env, POOL, "process")
            deploy_all(env, POOL)
            rows = _measure(env, api, args.rounds, root / "site")
            rows.append(_in_loop(env))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            log.close()
    _print(rows)
    return 0


def _measure(env: dict[str, str], api: str, rounds: int, site: Path) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    rows = []
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        for d in deployments:  # no scheduled runs: only what a check itself starts is counted
            for sched in d.schedules:
                client.update_deployment_schedule(d.id, sched.id, active=False)
        (score,) = [d for d in deployments if d.name == "score-inbox"]

        def runs_by_flow(before: set) -> dict[str, int]:
            made: dict[str, int] = {}
            for r in client.read_flow_runs(limit=200):
                if r.id not in before:
                    name = client.read_flow(r.flow_id).name
                    made[name] = made.get(name, 0) + 1
            return made

        for kind in ("flow run", "watch, one check"):
            for _ in range(rounds):
                before = {r.id for r in client.read_flow_runs(limit=200)}
                run_env = {**env, "PYTHONPATH": str(site)}
                if kind == "flow run":
                    run = client.create_flow_run_from_deployment(score.id)
                    run_env["PREFECT__FLOW_RUN_ID"] = str(run.id)
                    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "prefect.engine"]
                else:
                    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "flows.inbox_check"]
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=run_env)
                if proc.returncode != 0:
                    raise RuntimeError(f"{kind} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
                if kind == "flow run" and not client.read_flow_run(run.id).state.is_completed():
                    raise RuntimeError(f"the flow run did not complete:\n{proc.stderr[-3000:]}")
                rows.append({"kind": kind, **_time_v(proc.stderr), "tf": "TF_IMPORTED=True" in proc.stderr,
                             "pf": "PF_IMPORTED=True" in proc.stderr, "runs": runs_by_flow(before)})
    return rows


def _in_loop(env: dict[str, str]) -> dict:
    """CPU and wall of one check inside a running watch (the process and its imports already there)."""
    from dfd.settings import Settings
    from flows.inbox_check import check_once

    settings = Settings.from_env(env)
    cpu, wall = [], []
    for _ in range(20):
        c0, w0 = time.process_time(), time.perf_counter()
        assert check_once(settings)["due"] == []
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {"kind": "watch, per check", "user": statistics.median(cpu), "sys": 0.0,
            "wall": statistics.median(wall), "rss_mb": float("nan"), "tf": None,
            "pf": None, "runs": {}}


def _print(rows: list[dict]) -> None:
    print("\nidle inbox check (nothing due): one check, as it runs in production")
    print(f"{'how':<18} {'user s':>7} {'sys s':>6} {'cpu s':>6} {'wall s':>7} {'RSS MB':>7} {'TF':>5} {'PF':>5}"
          "  flow runs left")
    for r in rows:
        runs = ", ".join(f"{k} {v}" for k, v in sorted(r["runs"].items())) or "none"
        print(f"{r['kind']:<18} {r['user']:>7.3f} {r['sys']:>6.3f} {r['user'] + r['sys']:>6.3f} {r['wall']:>7.3f} "
              f"{r['rss_mb']:>7.0f} {str(r['tf']):>5} {str(r['pf']):>5}  {runs}")
    for kind in ("flow run", "watch, one check"):
        cpu = [r["user"] + r["sys"] for r in rows if r["kind"] == kind]
        wall = [r["wall"] for r in rows if r["kind"] == kind]
        print(f"median {kind}: CPU {statistics.median(cpu):.2f} s, wall {statistics.median(wall):.2f} s")
    print(f"(load average {os.getloadavg()[0]:.1f}; per check: CPU of this process, no RSS of its own)")


if __name__ == "__main__":
    raise SystemExit(main())
