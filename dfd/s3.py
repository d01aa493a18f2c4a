"""The S3 backend under its former name (it lives in :mod:`dfd.storage.s3`), so ``from dfd.s3 import ...`` works."""

from __future__ import annotations

from dfd.storage.s3 import S3Store, parse_s3_url

__all__ = ["S3Store", "parse_s3_url"]
