"""What a folder holds: the files to score (every file but hidden ones and the ready marker), and the checks
that refuse a folder with nothing to score before any work starts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dfd.scoring.errors import ScoringError
from dfd.storage import ObjectInfo, Store


@dataclass
class Scan:
    """What a folder holds: the files to score, plus what readiness checks need."""

    items: list[ObjectInfo]  # files to score, in key order (relative keys)
    ignored: int = 0  # hidden files and the ready marker
    newest_mtime: float = 0.0  # newest modification time of anything but the marker (hidden files count)
    marker_mtime: float | None = None  # the ready marker's mtime, if present

    @property
    def fingerprint(self) -> str:
        """A hash of the listing (keys, sizes, mtimes): it changes when any file is added, removed or changed."""
        h = hashlib.sha256()
        for o in self.items:
            h.update(f"{o.key}\t{o.size}\t{o.mtime!r}\n".encode())
        return h.hexdigest()


def scan_folder(store: Store, marker: str = "_READY") -> Scan:
    """List every file under the store's root, recursively, in key order.

    Hidden files and folders (a name starting with '.') and the ready marker at the top are not scored;
    everything else is, whatever its extension (the content decides, a name proves nothing).
    """
    scan = Scan(items=[])
    for obj in store.list(""):
        if obj.key == marker:
            scan.marker_mtime = obj.mtime
            scan.ignored += 1
            continue
        scan.newest_mtime = max(scan.newest_mtime, obj.mtime)
        if any(part.startswith(".") for part in obj.key.split("/")):
            scan.ignored += 1
            continue
        scan.items.append(obj)
    return scan


def check_source(store: Store, scan: Scan | None = None, marker: str = "_READY") -> Scan:
    """Scan ``store`` (unless ``scan`` is that already) or raise :class:`ScoringError` when the folder is
    missing or holds nothing to score."""
    problem = store.folder_problem("")
    if problem:
        raise ScoringError(f"input folder {store.url} {problem}")
    scan = scan if scan is not None else scan_folder(store, marker)
    if not scan.items:
        problem = store.folder_problem("", found_nothing=scan.ignored == 0) or "is empty: no files to score"
        raise ScoringError(f"input folder {store.url} {problem}")
    return scan
