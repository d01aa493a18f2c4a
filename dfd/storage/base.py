"""The store contract every backend implements: keys, errors, and the operations flows, tasks and the viewer use.

Keys are POSIX-style paths relative to the store's root (``runs/v1/model.keras``). Every write is atomic:
a reader sees either the old object or the whole new one, never part of it. Callers use only this interface,
so none of them ever branches on where the data lives: what differs between a folder on disk and an S3
prefix (whether a folder exists apart from its objects, whether a file can be read in place) is answered by
the store itself (:meth:`Store.folder_problem`, :meth:`Store.local_folder`, :meth:`Store.open_local`).

Keys are always valid text, whatever the names on disk: a local file name whose bytes are not UTF-8 is
listed with each such byte written ``\\xNN`` (Python's ``backslashreplace``, two lowercase hex digits, 80 to
ff), and a backslash that would otherwise read as the start of such an escape (before another backslash or
before ``xNN``) is doubled. Other backslashes are kept as they are (``back\\slash.jpg`` is listed as itself).
The escape is reversible (:func:`escape_name`, :func:`unescape_name`): every store turns a key back into the
real name before it touches the object, so ledgers, results and manifests that hold keys hold the exact name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from dfd.storage.files import atomic_write_local


class StorageError(RuntimeError):
    """A storage operation failed; the message says which object and why, in one line."""


class TooLarge(StorageError):
    """An object holds more bytes than the reader's limit."""


class NotAFile(StorageError):
    """The key names something that is not a regular file (a FIFO, a device, a socket)."""


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

    def child(self, prefix: str) -> Store:
        """A store of the same kind (and options) rooted at ``prefix`` inside this one."""
        raise NotImplementedError

    def read_versioned(self, key: str) -> tuple[bytes | None, str | None]:
        """Read an object with a version token for :meth:`write_if_unchanged` (``(None, None)`` if absent)."""
        raise NotImplementedError

    def write_if_unchanged(self, key: str, data: bytes, token: str | None) -> None:
        """Write only if the object still has version ``token`` (``None``: only if it does not exist).

        Raises :class:`Conflict` when another writer got there first, so no update is ever lost.
        """
        raise NotImplementedError

    # --- where the two kinds of store differ: answered here, so that no caller has to ask which it is ----
    def read_limited(self, key: str, max_bytes: int) -> bytes:
        """The object's bytes; :class:`TooLarge` when it holds more than ``max_bytes``. Inputs (images to train
        on or score) are read with this, so a store on disk can refuse what is not a regular file."""
        data = self.read_bytes(key)
        if len(data) > max_bytes:
            raise TooLarge(f"{len(data):,} bytes is over the limit of {max_bytes:,}")
        return data

    def open_local(self, key: str) -> int | None:
        """A read-only file descriptor for the object when the store is local (the caller closes it);
        ``None`` otherwise (then read it with :meth:`read_bytes`)."""
        return None

    def remove_stale_temporaries(self, prefix: str, older_than: float) -> list[str]:
        """Remove the temporary files that writes killed half-way left directly in the folder ``prefix``, those
        last modified before the time stamp ``older_than``; returns their names. A store of whole objects (S3)
        has none: an interrupted upload leaves no object."""
        return []

    def folder_problem(self, key: str = "", *, found_nothing: bool = False) -> str | None:
        """Why the folder ``key`` cannot be read as a folder, in words for a message (``does not exist``), or
        ``None``. ``found_nothing``: a listing of the folder found no object at all.

        Here a folder is only a key prefix and exists exactly while it holds objects, so nothing can be said
        before a listing; a store with real folders (on disk) answers at once and ignores ``found_nothing``.
        """
        return "does not exist or is empty" if found_nothing else None

    def local_folder(self, prefix: str, names: Sequence[str], cache_dir: str | Path) -> Path:
        """A local folder holding the objects ``names`` of the folder ``prefix``, for code that reads files by
        path (a saved model): ``cache_dir``, filled by download unless it holds them all already (reused while
        the objects are immutable, as a published run is). A store on disk gives its own folder instead."""
        cache_dir = Path(cache_dir)
        if not all((cache_dir / name).is_file() for name in names):
            for name in names:
                self.download_file(join(prefix, name), cache_dir / name)
        return cache_dir

    # --- helpers built on the primitives ---------------------------------------------------------------
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
