"""One storage interface with a backend chosen by URL: a local folder, or ``s3://bucket/prefix``.

:func:`open_store` is the only place that looks at a URL to pick a backend; everything else uses the
:class:`Store` contract (:mod:`dfd.storage.base`). Backends: :class:`LocalStore` (:mod:`dfd.storage.local`)
and ``S3Store`` (:mod:`dfd.storage.s3`, imported only when an ``s3://`` URL is opened: boto3 is only needed
for S3). Neither backend imports this module, so there is no import cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    join,
    unescape_name,
)
from dfd.storage.files import atomic_write_local, new_temp_file
from dfd.storage.local import LocalStore

__all__ = [
    "Conflict", "LocalStore", "NotAFile", "NotFound", "ObjectInfo", "S3Store", "StorageError", "Store", "TooLarge",
    "atomic_write_local", "clean_key", "escape_name", "join", "new_temp_file", "open_store", "unescape_name",
]


def open_store(url: str | Path, endpoint_url: str | None = None, **s3_options: Any) -> Store:
    """Open the store for ``url``: ``s3://bucket/prefix`` for S3, anything else a local folder.

    ``endpoint_url`` is the S3 endpoint of a non-AWS store; empty or ``None`` means ``S3_ENDPOINT_URL``, else
    AWS, so a caller passes the ``s3_endpoint_url`` setting as it is. ``s3_options`` (``max_attempts``,
    ``retry_mode``, timeouts, ...: :class:`~dfd.storage.s3.S3Store`'s, as ``Settings.s3_options()`` gives them
    with the endpoint) apply to S3 only.
    """
    url = str(url)
    if url.startswith("s3://"):
        from dfd.storage.s3 import S3Store

        if not endpoint_url:
            from dfd.settings import Settings

            endpoint_url = Settings.from_env().s3_endpoint
        return S3Store(url, endpoint_url=endpoint_url, **s3_options)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        raise StorageError(f"unsupported storage URL {url!r}: use a local path or s3://bucket/prefix")
    return LocalStore(url)


def __getattr__(name: str) -> Any:
    """``dfd.storage.S3Store`` on first use, so that importing the package does not import boto3."""
    if name == "S3Store":
        from dfd.storage.s3 import S3Store

        return S3Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
