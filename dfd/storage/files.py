"""Atomic writes of local files: what every store uses for a file on this machine (a download, a cached model)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The sha256 of a local file, read in blocks of 1 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | Path) -> None:
    """Flush a written file to disk before it is renamed into place."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_temp_file(folder: str | Path, prefix: str = ".tmp-") -> tuple[int, str]:
    """Create a new, empty file in ``folder`` for an atomic write; returns ``(fd, path)`` like ``mkstemp``.

    Unlike ``mkstemp`` (always 0600) the file is created with mode 0666 less the umask, as ``open`` would, so
    the object renamed into place gets the same permissions as any other file the process writes (0644 under
    umask 022, 0640 under 027), and a folder's default ACL applies. The umask is never read or changed.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        path = os.path.join(folder, prefix + secrets.token_hex(8))
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unused temporary file name", str(folder))


def atomic_write_local(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = new_temp_file(path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
