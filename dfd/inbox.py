"""The drop-folder convention: which folders of the inbox are complete and still need scoring.

Operators drop each batch as a folder directly inside the inbox (``INBOX_URL``, local or ``s3://``). A folder
is *ready* when either

* it holds the ready marker (``_READY`` by default, ``Settings.ready_marker``) and no file in it is newer
  than the marker (so files added after the marker wait until the marker is touched again, or go quiet), or
* nothing in it changed for ``quiet_seconds`` (``Settings.quiet_seconds``): the newest modification time of
  any file in it, hidden and partial files included, is at least that old.

A copy that preserves old modification times (``cp -p``, ``rsync -a`` without temporary files) defeats the
quiet rule; such copies should write the marker last. A ready folder is *due* when it was never scored, or
when its listing (paths, sizes, modification times) changed since the summary of its last scoring.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dfd.layout import SUMMARY_JSON
from dfd.scoring import Scan, batch_id_for, results_prefix, scan_folder
from dfd.storage import NotFound, StorageError, Store, join

if TYPE_CHECKING:
    from dfd.settings import Settings


@dataclass
class FolderState:
    """An inbox folder as one poll saw it: whether it is complete and due, why, and its listing (``scan``),
    which the scoring of a due folder uses as it is rather than listing the folder again."""

    name: str
    url: str
    batch_id: str
    ready: bool
    due: bool
    reason: str
    files: int
    scan: Scan

    def table_row(self) -> dict[str, Any]:
        """The folder's line in the inbox table: name, ready, due, reason, files."""
        return {"name": self.name, "ready": self.ready, "due": self.due, "reason": self.reason, "files": self.files}


def folder_state(
    inbox: Store,
    artifacts: Store,
    name: str,
    marker: str = "_READY",
    quiet_seconds: float = 60.0,
    now: float | None = None,
    endpoint_url: str | None = None,
) -> FolderState:
    """Whether the inbox folder ``name`` is complete, and whether it still needs scoring."""
    now = time.time() if now is None else now
    url = inbox.describe(name)
    scan = scan_folder(inbox.child(name), marker)
    batch_id = batch_id_for(url, inbox.url, endpoint_url)

    def state(ready: bool, due: bool, reason: str) -> FolderState:
        return FolderState(name, url, batch_id, ready, due, reason, len(scan.items), scan)

    if not scan.items:
        return state(False, False, "no files yet")
    age = now - scan.newest_mtime
    if scan.marker_mtime is not None and scan.marker_mtime >= scan.newest_mtime:
        why = f"has {marker}"
    elif age >= quiet_seconds:
        why = f"unchanged for {age:.0f}s"
    elif scan.marker_mtime is not None:
        return state(False, False, f"files newer than {marker} (changed {age:.0f}s ago)")
    else:
        return state(False, False, f"changed {age:.0f}s ago (waiting for {quiet_seconds:g}s of quiet or {marker})")
    try:
        summary = artifacts.read_json(join(results_prefix(batch_id), SUMMARY_JSON))
    except NotFound:
        return state(True, True, f"{why}, never scored")
    except StorageError:
        return state(True, True, f"{why}, previous summary unreadable")
    if summary.get("input_fingerprint") == scan.fingerprint:
        return state(True, False, f"{why}, already scored")
    return state(True, True, f"{why}, changed since it was scored")


def inbox_states(
    inbox: Store,
    artifacts: Store,
    marker: str = "_READY",
    quiet_seconds: float = 60.0,
    now: float | None = None,
    endpoint_url: str | None = None,
) -> list[FolderState]:
    """The state of every folder directly inside the inbox, by name."""
    return [
        folder_state(inbox, artifacts, name, marker, quiet_seconds, now, endpoint_url) for name in inbox.list_dirs("")
    ]


def settings_states(settings: Settings) -> list[FolderState]:
    """:func:`inbox_states` of the inbox, artifact store, marker and quiet time the ``settings`` give."""
    return inbox_states(settings.store(settings.inbox_url), settings.store(settings.artifacts_url),
                        settings.ready_marker, settings.quiet_seconds, endpoint_url=settings.s3_endpoint_url)
