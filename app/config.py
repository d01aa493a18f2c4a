"""The viewer's Flask configuration, built from the settings (the one reader of the environment).

The artifact store location, S3 options and image limits come from :class:`dfd.settings.Settings`
(``ARTIFACTS_URL``, ``S3_ENDPOINT_URL``, ``DFD_MAX_IMAGE_PIXELS``, ``DFD_WORK_DIR``), so the viewer reads the
same store as the flows; the viewer's own knobs from :class:`dfd.settings.ViewerSettings` (``VIEWER_<NAME>``,
documented there and in the README).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dfd.settings import Settings, SettingsError, ViewerSettings
from dfd.storage import Store, open_store

# Flask config keys that do not follow the rule "field name in capitals".
_KEY_OF = {"token": "VIEWER_TOKEN"}
# Server settings, used by app.serve, not by the app.
_SERVER_ONLY = ("host", "port", "threads")


class ConfigError(ValueError):
    """A viewer setting cannot be used."""


def load_config(env: dict[str, str] | None = None, override: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Flask config: :class:`ViewerSettings` and the store settings of :class:`Settings` (both read the
    environment), then ``override`` (tests). Keys are the setting names in capitals."""
    env = dict(os.environ if env is None else env)
    try:
        settings, viewer = Settings.from_env(env), ViewerSettings.from_env(env)
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None
    config: dict[str, Any] = {_KEY_OF.get(k, k.upper()): v for k, v in dataclasses.asdict(viewer).items()
                              if k not in _SERVER_ONLY}
    config["ARTIFACTS_URL"] = settings.artifacts_url
    config["S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    config["S3_OPTIONS"] = {k: v for k, v in settings.s3_options().items() if k != "endpoint_url"}
    config["MAX_IMAGE_PIXELS"] = settings.max_image_pixels
    config["CACHE_DIR"] = viewer.cache_dir or str(Path(settings.work_dir) / "viewer")
    config.update(override or {})
    return config


def open_config_store(config: Mapping[str, Any], url: str) -> Store:
    """The store at ``url`` with the S3 endpoint and client options of ``config``."""
    return open_store(url, config["S3_ENDPOINT_URL"], **config["S3_OPTIONS"])
