"""The local backend: a folder on disk, written through temporary files and atomic renames."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from dfd.storage.base import (
    Conflict,
    NotAFile,
    NotFound,
    ObjectInfo,
    StorageError,
    Store,
    TooLarge,
    clean_key,
    escape_name,
    unescape_name,
)
from dfd.storage.files import atomic_write_local, fsync_path, new_temp_file


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
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:  # no such name can exist (a viewer URL with a 300-byte name was a 500)
                return False
            raise

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

    def remove_stale_temporaries(self, prefix: str, older_than: float) -> list[str]:
        folder = self._path(prefix)
        if not folder.is_dir() or folder.is_symlink():
            return []
        removed = []
        for entry in _sorted_entries(folder):
            if not entry.name.startswith(".tmp-") or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime < older_than:
                    os.unlink(entry.path)
                    removed.append(entry.name)
        return removed

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
            fsync_path(tmp)
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

    def folder_problem(self, key: str = "", *, found_nothing: bool = False) -> str | None:
        """A folder on disk exists whatever it holds: ``does not exist``, ``is not a folder``, or ``None``."""
        path = self._path(key)
        if path.is_dir():
            return None
        return "is not a folder" if path.exists() else "does not exist"

    def local_folder(self, prefix: str, names: Sequence[str], cache_dir: str | Path) -> Path:
        """The store's own folder: its files are already on local disk (``cache_dir`` is not used)."""
        return self._path(prefix)

    def child(self, prefix: str) -> LocalStore:
        """A store rooted at the folder ``prefix`` (a key, so escaped names work as they do everywhere)."""
        return LocalStore(self.root / unescape_name(clean_key(prefix)))

    def read_limited(self, key: str, max_bytes: int) -> bytes:
        """Read through :meth:`open_local`, refusing anything but a regular file (:class:`NotAFile`) and files
        over ``max_bytes`` (:class:`TooLarge`). Checking the descriptor rather than the path leaves no gap for
        the file to be swapped in between; ``OSError`` (missing, permission denied) comes as it is."""
        with open(self.open_local(key), "rb", closefd=True) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise NotAFile("not a regular file")
            if st.st_size > max_bytes:
                raise TooLarge(f"{st.st_size:,} bytes is over the limit of {max_bytes:,}")
            data = f.read()  # not read(max_bytes + 1): that allocates the whole limit for every file
        if len(data) > max_bytes:
            raise TooLarge(f"it grew past the limit of {max_bytes:,} bytes while being read")
        return data

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
