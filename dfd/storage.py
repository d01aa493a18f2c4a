"""One storage interface with a backend chosen by URL: a local folder, or ``s3://bucket/prefix``.

Keys are POSIX-style paths relative to the store's root (``runs/v1/model.keras``). Every write is atomic:
a reader sees either the old object or the whole new one, never part of it. Flows, tasks and the viewer use
only this interface, so none of them ever branches on where the data lives.

Keys are always valid text, whatever the names on disk: a local file name whose bytes are not UTF-8 is
listed with each such byte written ``\\xNN`` (Python's ``backslashreplace``, two lowercase hex digits, 80 to
ff), and a backslash that would otherwise read as the start of such an escape (before another backslash or
before ``xNN``) is doubled. Other backslashes are kept as they are (``back\\slash.jpg`` is listed as itself).
The escape is reversible (:func:`escape_name`, :func:`unescape_name`): every store turns a key back into the
real name before it touches the object, so ledgers, results and manifests that hold keys hold the exact name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any


class StorageError(RuntimeError):
    """A storage operation failed; the message says which object and why, in one line."""


class NotFound(StorageError):
    """The object does not exist."""


class Conflict(StorageError):
    """A conditional write lost a race: the object changed since it was read."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float


# A backslash that must be doubled: before another backslash, an undecodable byte, or text that reads as \xNN.
_AMBIGUOUS_BACKSLASH = re.compile("\\\\(?=\\\\|x[89a-f][0-9a-f]|[\udc80-\udcff])")
_ESCAPE = re.compile(r"\\(\\|x[89a-f][0-9a-f])")


def escape_name(name: str) -> str:
    """The key text for a file name as the OS gives it (undecodable bytes as surrogates, see the module
    docstring): lossless, reversible with :func:`unescape_name`, and always encodable as UTF-8."""
    if "\\" not in name:
        try:
            name.encode("utf-8")
            return name
        except UnicodeEncodeError:
            pass
    doubled = _AMBIGUOUS_BACKSLASH.sub(r"\\\\", name)
    return doubled.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unescape_name(key: str) -> str:
    """The real name (undecodable bytes as surrogates, as ``os`` functions take them) of a key."""
    if "\\" not in key:
        return key
    return _ESCAPE.sub(lambda m: "\\" if m.group(1) == "\\" else chr(0xDC00 + int(m.group(1)[1:], 16)), key)


def clean_key(key: str) -> str:
    """Normalise a key and refuse anything that could leave the store's root.

    A backslash is an ordinary character in a POSIX name and in an S3 key, so it is allowed; ``..`` is not.
    """
    if "\x00" in key:
        raise StorageError(f"invalid key {key!r}")
    parts = [p for p in PurePosixPath(key.strip("/")).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise StorageError(f"invalid key {key!r}: '..' is not allowed")
    return "/".join(parts)


def join(*parts: str) -> str:
    """Join key parts with '/'."""
    return clean_key("/".join(p.strip("/") for p in parts if p))


class Store:
    """Abstract store rooted at ``url``. Subclasses implement the primitive operations."""

    url: str

    # --- primitives -----------------------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object under ``prefix`` (recursive), in key order."""
        raise NotImplementedError

    def list_dirs(self, prefix: str = "") -> list[str]:
        """Names of the immediate sub-folders of ``prefix``."""
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def stat(self, key: str) -> ObjectInfo:
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the folder ``prefix`` (and, on disk, the folder with any temporary files
        an interrupted write left in it); returns how many objects were deleted."""
        keys = [o.key for o in self.list(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)

    def upload_file(self, local_path: str | Path, key: str) -> None:
        """Copy a local file into the store atomically."""
        self.write_bytes(key, Path(local_path).read_bytes())

    def download_file(self, key: str, local_path: str | Path) -> Path:
        """Copy an object to a local file (written atomically)."""
        local_path = Path(local_path)
        atomic_write_local(local_path, self.read_bytes(key))
        return local_path

    def local_path(self, key: str) -> Path | None:
        """The object's path on local disk, when the store is local; ``None`` otherwise."""
        return None

    def open_local(self, key: str) -> int | None:
        """A read-only file descriptor for the object when the store is local (the caller closes it);
        ``None`` otherwise."""
        return None

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """Read an object with a version token for :meth:`write_if_unchanged` (``(None, None)`` if absent)."""
        raise NotImplementedError

    def write_if_unchanged(self, key: str, data: bytes, token: str | None) -> None:
        """Write only if the object still has version ``token`` (``None``: only if it does not exist).

        Raises :class:`Conflict` when another writer got there first, so no update is ever lost.
        """
        raise NotImplementedError

    # --- helpers built on the primitives ---------------------------------------------------------------
    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def write_text(self, key: str, text: str) -> None:
        self.write_bytes(key, text.encode("utf-8"))

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as exc:
            raise StorageError(f"{self.describe(key)} is not valid JSON: {exc}") from None

    def write_json(self, key: str, obj: Any) -> None:
        self.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def describe(self, key: str = "") -> str:
        """A human-readable location for messages."""
        key = clean_key(key) if key else ""
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def child(self, prefix: str) -> Store:
        """A store rooted at ``prefix`` inside this one."""
        return open_store(self.describe(prefix), endpoint_url=getattr(self, "endpoint_url", None) or None)


class LocalStore(Store):
    """A folder on local disk. Writes go to a temporary file in the same folder, then ``os.replace``."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        self._inside: set[str] = {""}  # folders (keys) already checked to resolve inside the root

    def _path(self, key: str) -> Path:
        key = clean_key(key)
        path = self.root / unescape_name(key) if key else self.root
        # Refuse symlinks that point outside the root.
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:
            raise StorageError(f"cannot resolve {self.describe(key)}: {exc}") from None
        if resolved != self.root and self.root not in resolved.parents:
            raise StorageError(f"{key!r} leaves the store {self.url}")
        return path

    def read_bytes(self, key: str) -> bytes:
        try:
            with open(self.open_local(key), "rb", closefd=True) as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"not found: {self.describe(key)}") from None
        except IsADirectoryError:
            raise NotFound(f"is a folder, not a file: {self.describe(key)}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.describe(key)}: {exc.strerror or exc}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        atomic_write_local(self._path(key), data)

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).is_file()
        except StorageError:
            return False

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise NotFound(f"not found: {self.describe(key)}") from None
        return ObjectInfo(clean_key(key), st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            st = base.stat()
            yield ObjectInfo(clean_key(prefix), st.st_size, st.st_mtime)
            return
        if not base.is_dir():
            return
        yield from self._walk_sorted(base)

    def _walk_sorted(self, folder: Path) -> Iterator[ObjectInfo]:
        """Files under ``folder`` in key order, like S3 (a folder sorts as ``name/``, so ``a/x`` comes
        after ``a-b`` and before ``ab``). Links to folders are not followed. The walk keeps its own stack
        (one iterator per open folder level), so any depth the file system allows is listed."""
        stack = [iter(_sorted_entries(folder))]
        while stack:
            entry = next(stack[-1], None)
            if entry is None:
                stack.pop()
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(iter(_sorted_entries(entry.path)))
                continue
            if entry.name.startswith(".tmp-") or (entry.is_symlink() and _points_to_dir(entry)):
                continue
            rel = escape_name(Path(entry.path).relative_to(self.root).as_posix())
            try:
                st = os.stat(entry.path)
            except OSError:
                # Broken links, loops or unreadable entries are still listed, with size -1, so that
                # callers can report them instead of silently skipping them.
                yield ObjectInfo(rel, -1, 0.0)
                continue
            yield ObjectInfo(rel, st.st_size, st.st_mtime)

    def list_dirs(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(escape_name(p.name) for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def delete_prefix(self, prefix: str) -> int:
        count = super().delete_prefix(prefix)
        folder = self._path(prefix)
        if clean_key(prefix) and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
        return count

    def upload_file(self, local_path: str | Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp_file(dest.parent)
        os.close(fd)
        try:
            shutil.copyfile(local_path, tmp)
            _fsync_path(tmp)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def download_file(self, key: str, local_path: str | Path) -> Path:
        src = self._path(key)
        if not src.is_file():
            raise NotFound(f"not found: {self.describe(key)}")
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = new_temp_file(local_path.parent)
        os.close(fd)
        shutil.copyfile(src, tmp)
        os.replace(tmp, local_path)
        return local_path

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def child(self, prefix: str) -> LocalStore:
        """A store rooted at the folder ``prefix`` (a key, so escaped names work as they do everywhere)."""
        return LocalStore(self.root / unescape_name(clean_key(prefix)))

    def open_local(self, key: str) -> int:
        """Open the file at ``key`` for reading, without blocking (a FIFO would otherwise wait for a writer).

        Same refusal as :meth:`_path` (nothing outside the root), at a fraction of the cost for a folder of
        files: each folder is resolved once per store object, and the file itself is opened with
        ``O_NOFOLLOW``; only a file that is itself a link is resolved before it is followed. Batch scoring
        opens every file this way: resolving each path cost more than reading it and halved throughput
        (bench/score_throughput.py). Raises :class:`StorageError` for a link that leaves the store or
        loops, and ``OSError`` (missing, permission denied) as it comes.
        """
        key = clean_key(key)
        folder = key.rpartition("/")[0]
        if folder not in self._inside:
            self._path(folder)
            self._inside.add(folder)
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(f"{self.root}/{unescape_name(key)}", flags | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
        return os.open(self._path(key), flags)  # a link: followed only when it stays inside

    def _lock(self, key: str):
        lock_path = self._path(key).with_name("." + self._path(key).name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        return _FileLock(lock_path)

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        try:
            data = self.read_bytes(key)
        except NotFound:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    def write_if_unchanged(self, key: str, data: bytes, token: str | None) -> None:
        # An exclusive lock on a side file serialises writers; the rename keeps readers lock-free.
        with self._lock(key):
            _, current = self.read_versioned(key)
            if current != token:
                raise Conflict(f"{self.describe(key)} changed since it was read; retry")
            self.write_bytes(key, data)


def _sorted_entries(folder: str | Path) -> list[os.DirEntry]:
    """The entries of one folder in key order (a folder sorts as ``name/``); none when it cannot be read."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return []
    entries.sort(key=lambda e: escape_name(e.name) + "/" if e.is_dir(follow_symlinks=False) else escape_name(e.name))
    return entries


def _points_to_dir(entry: os.DirEntry) -> bool:
    """True when a link points to a folder; False for a link to a file, a broken link or a link loop."""
    try:
        return entry.is_dir()
    except OSError:  # ELOOP and friends: listed (size -1) so the caller can report it
        return False


class _FileLock:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> _FileLock:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.fd is not None
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _fsync_path(path: str | Path) -> None:
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


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def open_store(url: str | Path, endpoint_url: str | None = None) -> Store:
    """Open the store for ``url``: ``s3://bucket/prefix`` for S3, anything else a local folder."""
    url = str(url)
    if url.startswith("s3://"):
        from dfd.s3 import S3Store  # imported lazily: boto3 is only needed for S3

        return S3Store(url, endpoint_url=endpoint_url or os.environ.get("S3_ENDPOINT_URL") or None)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise StorageError(f"unsupported storage URL {url!r}: use a local path or s3://bucket/prefix")
    return LocalStore(url)
