"""Names of a batch: its id (the folder a batch's results go to) and its Prefect artifact key.

A folder directly inside the inbox keeps its own name when that name is safe (``[A-Za-z0-9][A-Za-z0-9._-]*``,
at most 100 characters); any other folder gets ``<slug of its name>-<first 8 hex digits of sha1(its full
URL)>``, so the same folder always maps to the same id, and two folders with the same name in different
places do not collide.
"""

from __future__ import annotations

import hashlib
import re

from dfd.layout import batch_key
from dfd.storage import clean_key, open_store

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def slug(text: str) -> str:
    """Lowercase letters, digits and single dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def batch_id_for(source_url: str, inbox_url: str | None = None, endpoint_url: str | None = None) -> str:
    """A stable id for the folder at ``source_url`` (see the module docstring for the scheme)."""
    src = open_store(source_url, endpoint_url).url.rstrip("/")
    name = src.rsplit("/", 1)[-1]
    if inbox_url:
        inbox = open_store(inbox_url, endpoint_url)
        if inbox.describe(name).rstrip("/") == src and _SAFE_ID.fullmatch(name):
            return name
    digest = hashlib.sha1(src.encode("utf-8")).hexdigest()[:8]
    return f"{slug(name)[:60] or 'batch'}-{digest}"


def artifact_key(batch_id: str) -> str:
    """The Prefect artifact key for a batch: ``score-<slug>`` (plus a short hash when the slug lost detail)."""
    s = slug(batch_id)[:80] or "batch"
    if s != batch_id:
        s = f"{s}-{hashlib.sha1(batch_id.encode('utf-8')).hexdigest()[:6]}"
    return f"score-{s}"


def results_prefix(batch_id: str) -> str:
    """The folder (key) of a batch's results in the artifact store: ``scores/<batch_id>`` (checked as a key)."""
    return clean_key(batch_key(batch_id))
