"""The model a batch is scored with: resolved in the registry, loaded through the process's one model cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfd.storage import Store


def load_predictor(artifacts: Store, version: str | None, work_dir: str | Path = ".dfd-work") -> tuple[Any, str]:
    """The predictor for ``version`` (default: the champion) and the resolved version; loaded once per process
    (:func:`dfd.predict.load_published`, shared with the viewer).

    Raises :class:`dfd.registry.RegistryError` when there is no champion or the version is unknown.
    """
    from dfd.predict import load_published
    from dfd.registry import resolve_version

    resolved = resolve_version(artifacts, version)
    return load_published(artifacts, resolved, work_dir), resolved
