"""Prefect's temporary local server must not outlive the command that started it.

Without ``PREFECT_API_URL`` a flow run as a command starts Prefect's temporary server as a child process and
stops it at exit. A ``kill -9`` of the command skips that: the server is re-parented and keeps its port and
about 190 MB. The commands therefore tag the servers they start (the environment variable ``DFD_SERVER_OWNER``,
``<pid>:<start time>`` of the command, which Prefect passes on to the server it spawns) and, on every start,
stop the tagged servers whose owner is gone. Servers started any other way carry no tag and are never touched.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

OWNER_VAR = "DFD_SERVER_OWNER"
EPHEMERAL_VAR = "PREFECT__SERVER_EPHEMERAL"  # set by Prefect on the temporary server it starts


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def owner_tag(pid: int | None = None) -> str:
    """``<pid>:<start time>`` of a process (this one by default): unique even when a pid is reused."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_time(pid)}"


def tag_servers_started_here() -> None:
    """Mark the temporary server this process may start as ours (inherited through the environment)."""
    os.environ[OWNER_VAR] = owner_tag()


def orphaned_servers() -> list[int]:
    """Pids of tagged temporary servers whose owning command is no longer running (same user only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        env = _environ(int(entry.name))
        tag = env.get(OWNER_VAR)
        if env.get(EPHEMERAL_VAR) != "1" or not tag or ":" not in tag:
            continue
        owner, started = tag.split(":", 1)
        if owner.isdigit() and _start_time(int(owner)) != started:
            found.append(int(entry.name))
    return found


def reap_orphaned_servers(log: Callable[[str], object] = print) -> list[int]:
    """Stop (SIGTERM) every orphaned temporary server found; returns their pids."""
    pids = orphaned_servers()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            continue
        log(f"stopped Prefect's temporary server (pid {pid}) left behind by a killed command")
    return pids


def prepare() -> None:
    """At a command's start: reap what killed commands left, and tag what this one may start (with a configured
    ``PREFECT_API_URL`` it starts none, and the tag is unused)."""
    reap_orphaned_servers()
    tag_servers_started_here()
