"""The viewer's configuration: defaults, then environment variables, then an explicit (test) override.

The artifact store location and image limits come from :class:`dfd.settings.Settings` (``ARTIFACTS_URL``,
``S3_ENDPOINT_URL``, ``DFD_MAX_IMAGE_PIXELS``, ``DFD_WORK_DIR``), so the viewer reads the same store as the
flows. Viewer-only knobs use the ``VIEWER_`` prefix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dfd.settings import Settings

DEFAULTS: dict[str, Any] = {
    "ARTIFACTS_URL": "artifacts",
    "S3_ENDPOINT_URL": "",
    # Largest request body (uploads); Flask answers 413 above it.
    "MAX_CONTENT_LENGTH": 16 * 1024 * 1024,
    # Largest image (width x height) decoded from an upload or a batch file; above it: 400 / no thumbnail.
    "MAX_IMAGE_PIXELS": 40_000_000,
    # Optional shared secret for upload/predict (form field ``token`` or ``Authorization: Bearer``).
    "VIEWER_TOKEN": "",
    # Listings and small JSON files are re-read at most this often (seconds); 0 = on every request.
    "REFRESH_SECONDS": 2.0,
    # Rows per batch page (default and upper bound).
    "PAGE_SIZE": 50,
    "MAX_PAGE_SIZE": 500,
    # Thumbnails: longest side in pixels, JPEG quality, and how many are kept in memory.
    "THUMB_SIZE": 96,
    "THUMB_QUALITY": 80,
    "THUMB_CACHE_ENTRIES": 4096,
    # Parsed batch result tables kept in memory (each 100,000-row table takes some tens of MB).
    "TABLE_CACHE_ENTRIES": 4,
    # Explanation heatmaps: at most this many model views per image, and the longest side shown.
    "EXPLAIN_MAX_TILES": 64,
    "EXPLAIN_DISPLAY_SIZE": 448,
    # Grad-CAM and the overlay work on a copy of the upload at most this many pixels on its longest side
    # (the score always uses the full image, like batch scoring).
    "EXPLAIN_MAX_SIDE": 1024,
    # Uploads decoded, scored and explained at once; how many more may wait for a slot, and for how long.
    # Beyond that: 503 with Retry-After. The defaults leave 2 of the server's 8 threads to the pages.
    "PREDICT_CONCURRENCY": 2,
    "PREDICT_QUEUE": 4,
    "PREDICT_WAIT_SECONDS": 60.0,
    # Originals decoded for thumbnails at once (the others wait, up to PREDICT_WAIT_SECONDS).
    "THUMB_CONCURRENCY": 2,
    # Where downloaded models are cached when the store is remote.
    "CACHE_DIR": ".dfd-work/viewer",
    # Store URL where uploads are kept; empty (default) = uploads are never stored.
    "KEEP_UPLOADS_URL": "",
    "RECENT_ITEMS": 8,
}

# Environment variable for each viewer key (besides those read through Settings).
ENV_NAMES = {
    "MAX_CONTENT_LENGTH": "VIEWER_MAX_CONTENT_LENGTH",
    "VIEWER_TOKEN": "VIEWER_TOKEN",
    "REFRESH_SECONDS": "VIEWER_REFRESH_SECONDS",
    "PAGE_SIZE": "VIEWER_PAGE_SIZE",
    "MAX_PAGE_SIZE": "VIEWER_MAX_PAGE_SIZE",
    "THUMB_SIZE": "VIEWER_THUMB_SIZE",
    "THUMB_CACHE_ENTRIES": "VIEWER_THUMB_CACHE_ENTRIES",
    "TABLE_CACHE_ENTRIES": "VIEWER_TABLE_CACHE_ENTRIES",
    "EXPLAIN_MAX_TILES": "VIEWER_EXPLAIN_MAX_TILES",
    "EXPLAIN_MAX_SIDE": "VIEWER_EXPLAIN_MAX_SIDE",
    "PREDICT_CONCURRENCY": "VIEWER_PREDICT_CONCURRENCY",
    "PREDICT_QUEUE": "VIEWER_PREDICT_QUEUE",
    "PREDICT_WAIT_SECONDS": "VIEWER_PREDICT_WAIT_SECONDS",
    "THUMB_CONCURRENCY": "VIEWER_THUMB_CONCURRENCY",
    "CACHE_DIR": "VIEWER_CACHE_DIR",
    "KEEP_UPLOADS_URL": "VIEWER_KEEP_UPLOADS_URL",
}


class ConfigError(ValueError):
    """A viewer setting from the environment cannot be used."""


def load_config(env: dict[str, str] | None = None, override: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the environment, then ``override`` (tests)."""
    env = dict(os.environ if env is None else env)
    config = dict(DEFAULTS)
    settings = Settings.from_env(env)
    config["ARTIFACTS_URL"] = settings.artifacts_url
    config["S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    config["MAX_IMAGE_PIXELS"] = settings.max_image_pixels
    config["CACHE_DIR"] = str(Path(settings.work_dir) / "viewer")
    for key, name in ENV_NAMES.items():
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        default = DEFAULTS[key]
        try:
            config[key] = type(default)(raw) if not isinstance(default, str) else raw
        except ValueError:
            raise ConfigError(f"environment variable {name} is not a valid {type(default).__name__}: {raw!r}") from None
    config.update(override or {})
    return config
