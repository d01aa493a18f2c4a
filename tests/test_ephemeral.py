"""Prefect's temporary server does not outlive a killed command: tagged at start, reaped on the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import ephemeral

ROOT = Path(__file__).resolve().parents[1]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _sleeper(**env: str) -> subprocess.Popen:
    return subprocess.Popen(SLEEPER, env={**os.environ, **env})


def _dead_owner() -> str:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    tag = ephemeral.owner_tag(proc.pid)
    proc.wait()
    return tag


def test_only_tagged_servers_whose_owner_is_gone_are_reaped():
    orphan = _sleeper(PREFECT__SERVER_EPHEMERAL="1", DFD_SERVER_OWNER=_dead_owner())
    owned = _sleeper(PREFECT__SERVER_EPHEMERAL="1", DFD_SERVER_OWNER=ephemeral.owner_tag())
    untagged = _sleeper(PREFECT__SERVER_EPHEMERAL="1")  # someone else's server: never ours to stop
    not_a_server = _sleeper(DFD_SERVER_OWNER=_dead_owner())
    try:
        found = ephemeral.orphaned_servers()
        assert orphan.pid in found
        assert not {owned.pid, untagged.pid, not_a_server.pid} & set(found)
        lines: list[str] = []
        assert orphan.pid in ephemeral.reap_orphaned_servers(lines.append)
        assert orphan.wait(timeout=300) == -signal.SIGTERM, "the orphan was not stopped"
        assert any(f"pid {orphan.pid}" in line for line in lines)
        assert all(p.poll() is None for p in (owned, untagged, not_a_server))
    finally:
        for p in (orphan, owned, untagged, not_a_server):
            p.kill()
            p.wait()


@pytest.mark.slow
def test_a_killed_score_command_leaves_a_server_that_the_next_start_stops(tmp_path: Path):
    from helpers import make_dataset, publish_tiny_model

    artifacts = tmp_path / "artifacts"
    publish_tiny_model(artifacts)
    folder = make_dataset(tmp_path / "batch", per_class=2, size=32)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(ARTIFACTS_URL=str(artifacts), DFD_WORK_DIR=str(tmp_path / "w"), PREFECT_HOME=str(tmp_path / "ph"))
    cli = subprocess.Popen([sys.executable, "-m", "flows.score_batch", str(folder)], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = None
    deadline = time.monotonic() + 300
    servers: list[int] = []
    while not servers and time.monotonic() < deadline and cli.poll() is None:
        tag = tag or ephemeral.owner_tag(cli.pid)
        servers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                   and ephemeral._environ(int(p.name)).get("DFD_SERVER_OWNER") == tag
                   and ephemeral._environ(int(p.name)).get("PREFECT__SERVER_EPHEMERAL") == "1"]
        time.sleep(0.2)
    assert servers, "the command never started a tagged temporary server (waited up to 300 s)"
    cli.send_signal(signal.SIGKILL)
    cli.wait()
    server = servers[0]
    assert Path(f"/proc/{server}").exists()  # what a kill -9 leaves behind
    assert server in ephemeral.reap_orphaned_servers(lambda _: None)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _alive(server):
        time.sleep(0.2)
    assert not _alive(server), "the orphaned server did not stop within 120 s of SIGTERM"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
