"""The one reader of configuration: defaults, overridden by environment variables, then by explicit parameters.

:class:`Settings` is what the flows, the scorer and the stores need. Every field ``name`` can be set with
the environment variable ``DFD_<NAME>``; the storage URLs, the S3 client options and a few operational
settings also accept the short names documented in the README (``ARTIFACTS_URL``, ``DATA_URL``,
``INBOX_URL``, ``SYNTHETIC_URL``, ``S3_ENDPOINT_URL``, ``WEBHOOK_URL``, ``AWS_MAX_ATTEMPTS``, ...).
:class:`ViewerSettings` holds the web viewer's own knobs, each set with ``VIEWER_<NAME>``. Nothing else in
the product reads these variables. (A hand-written reader rather than pydantic-settings: it is small, keeps
the frozen dataclass the flows pass around, and its errors name the variable.)
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dfd.storage import Store

# Short environment names accepted besides DFD_<NAME>.
ENV_ALIASES = {
    "data_url": "DATA_URL",
    "synthetic_url": "SYNTHETIC_URL",
    "artifacts_url": "ARTIFACTS_URL",
    "inbox_url": "INBOX_URL",
    "s3_endpoint_url": "S3_ENDPOINT_URL",
    "webhook_url": "WEBHOOK_URL",
    "viewer_url": "VIEWER_URL",
    "s3_max_attempts": "AWS_MAX_ATTEMPTS",
    "s3_retry_mode": "AWS_RETRY_MODE",
    "s3_connect_timeout": "S3_CONNECT_TIMEOUT",
    "s3_read_timeout": "S3_READ_TIMEOUT",
    "s3_max_pool_connections": "S3_MAX_POOL_CONNECTIONS",
}


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    """Everything a flow, the scorer or the viewer needs to know about where things are and how to train."""

    # Where things live: a local path or an s3://bucket/prefix URL.
    data_url: str = "data/sample_data"
    synthetic_url: str = "data/synthetic_data"
    artifacts_url: str = "artifacts"
    inbox_url: str = "data/inbox"
    s3_endpoint_url: str = ""
    # S3 client: attempts per request (with backoff), botocore retry mode, timeouts (s), parallel requests.
    s3_max_attempts: int = 5
    s3_retry_mode: str = "standard"
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 60.0
    s3_max_pool_connections: int = 32
    # Local scratch space for training checkpoints and downloaded models (never shared between machines).
    work_dir: str = ".dfd-work"

    # Data validation and split.
    seed: int = 42
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    min_images_per_class: int = 10
    max_image_pixels: int = 40_000_000
    max_file_bytes: int = 64 * 1024 * 1024
    near_duplicate_distance: int = 4
    # Files that must stay in one split: "folder" (first subfolder under real/ or df/, e.g. one video),
    # "none", or "regex:PATTERN" (see dfd.data).
    group_by: str = "folder"

    # Augmentation (the seed's "synthetic data"): copies per training image, written to synthetic_url.
    augment_per_image: int = 0  # measured: resampled copies stalled patchnet on lfw_faceswap_2k (docs/QUALITY.md)
    augment_rotation: float = 10.0
    augment_shift: float = 0.05
    augment_zoom: float = 0.1
    augment_flip: bool = True
    # Synthetic fakes made from training reals (self-blending / up-sampling traces): the share of training
    # real images that also yield one synthetic fake, written to synthetic_url df/ (0 = off).
    synthetic_fakes: float = 0.0

    # Model and training.
    arch: str = "patchnet"
    crop_size: int = 0  # 0 = choose from the data (largest size up to max_crop_size that fits the images)
    max_crop_size: int = 128
    # Views averaged at scoring when images are clearly larger than a crop (centre, then corners; 1, 5 or 9).
    # Measured (docs/QUALITY.md, lfw_faceswap_2k, 3 seeds, the same trained models): 1 view scores clean test AUC
    # 0.9938 against 0.9919 and runs 2-2.6x faster end to end, but loses 0.014 AUC after JPEG q50 (0.9629 against
    # 0.9764, every seed) and doubles the ECE; so five stay the default and 1 is the documented fast mode.
    eval_crops: int = 5
    # Measured (docs/QUALITY.md, 3 seeds): with the plateau schedule, 40 epochs let lfw_faceswap_2k learn both
    # scales (x0.5 drop 0.160 -> 0.099) and lift cifake_2k (0.965 -> 0.969; 0.972 with scale_aug 0.5); early
    # stopping ends a run sooner when validation AUC stops rising.
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 2e-3
    patience: int = 10
    # Halve the learning rate after this many epochs without a better validation AUC (0 = off).
    lr_plateau_patience: int = 3
    width: int = 32
    # Robustness augmentation: probability of each degradation (downscale, colour, blur, JPEG); 0 = off.
    robust_aug: float = 0.0
    # Scale augmentation: probability that a training image is first down-scaled by a random factor in
    # [scale_aug_min, 1] (both classes alike), so that resized images keep being detected (docs/QUALITY.md).
    scale_aug: float = 0.8
    scale_aug_min: float = 0.5
    # Crop to the largest detected face (OpenCV Haar cascade) before cutting views; whole image if none.
    face_crop: bool = False
    # Optional pretrained weights file for the efficientnet-b0 backbone (empty = random initialisation).
    weights_path: str = ""

    # Training restarts after a stalled start (see dfd.train): epochs checked, and tries in all (0/1 = off).
    stall_epochs: int = 3
    max_train_attempts: int = 3

    # Promotion: the candidate must not be worse than the champion by more than this AUC on the same images.
    promotion_tolerance: float = 0.005
    # Quality floor: never promote a model whose AUC 95% lower bound (group bootstrap, validation and test)
    # is at or below this, with or without a champion (dfd.promotion).
    min_auc: float = 0.55

    # Scoring.
    score_batch_size: int = 64
    # How much work (seconds) a killed scoring run may lose; 0 writes a ledger chunk after every batch.
    ledger_flush_seconds: float = 1.0
    ready_marker: str = "_READY"
    quiet_seconds: float = 60.0
    # Scoring engine (docs/SCALING.md): 0 workers and no address score in the flow's own process; N workers
    # start a local Dask cluster of N worker processes for the run; an address (tcp://host:8786) uses that
    # existing Dask cluster. Either way a batch is cut into shards of score_shard_files files.
    score_workers: int = 0
    dask_address: str = ""
    score_shard_files: int = 256

    # Notifications (off when empty).
    webhook_url: str = ""
    # The viewer's address as a browser reaches it (http://host:port, empty: unknown). When set, a retrain run's
    # Prefect artifacts show its plots as images the viewer serves and link to its run page.
    viewer_url: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from defaults, then the environment, then non-None ``overrides``."""
        settings = cls(**_read(cls, env, "DFD_", ENV_ALIASES, overrides))
        settings.check()
        return settings

    @classmethod
    def one_from_env(cls, name: str, env: dict[str, str] | None = None) -> Any:
        """One setting from defaults and the environment, without reading (or failing on) the others: for
        code that must work even when another setting is invalid, like the failure webhook."""
        return _read(cls, env, "DFD_", ENV_ALIASES, {}, only=name).get(name, getattr(cls, name))

    @property
    def s3_endpoint(self) -> str | None:
        """The S3 endpoint URL, or ``None`` for AWS itself (the one place an empty setting becomes ``None``)."""
        return self.s3_endpoint_url.strip() or None

    def store(self, url: str) -> Store:
        """The store at ``url`` (a local path or ``s3://``) with these S3 endpoint and client options."""
        from dfd.storage import open_store

        return open_store(url, **self.s3_options())

    def s3_options(self) -> dict[str, Any]:
        """Keyword arguments for :class:`dfd.storage.s3.S3Store`: the endpoint and the client options."""
        return {"endpoint_url": self.s3_endpoint, "max_attempts": self.s3_max_attempts,
                "retry_mode": self.s3_retry_mode, "connect_timeout": self.s3_connect_timeout,
                "read_timeout": self.s3_read_timeout, "max_pool_connections": self.s3_max_pool_connections}

    def check(self) -> None:
        """Reject values that would only fail later, with a message that names the setting."""
        if not 0 < self.val_fraction < 0.5 or not 0 < self.test_fraction < 0.5:
            raise SettingsError("val_fraction and test_fraction must each be between 0 and 0.5")
        if self.min_images_per_class < 3:
            raise SettingsError("min_images_per_class must be at least 3 (one per split)")
        if self.epochs < 0 or self.batch_size < 1:
            raise SettingsError("epochs must be >= 0 and batch_size >= 1")
        if self.augment_per_image < 0:
            raise SettingsError("augment_per_image must be >= 0")
        if self.crop_size and self.crop_size < 16:
            raise SettingsError("crop_size must be 0 (auto) or at least 16")
        if not 0 <= self.robust_aug <= 1:
            raise SettingsError("robust_aug must be a probability between 0 and 1")
        if not 0 <= self.synthetic_fakes <= 1:
            raise SettingsError("synthetic_fakes must be between 0 and 1")
        if not 0 <= self.scale_aug <= 1:
            raise SettingsError("scale_aug must be a probability between 0 and 1")
        if not 0.1 <= self.scale_aug_min <= 1:
            raise SettingsError("scale_aug_min must be between 0.1 and 1")
        if not 0 <= self.min_auc < 1:
            raise SettingsError("min_auc must be between 0 and 1 (0.5 = chance)")
        if self.stall_epochs < 0 or self.max_train_attempts < 1:
            raise SettingsError("stall_epochs must be >= 0 and max_train_attempts >= 1")
        if self.ledger_flush_seconds < 0:
            raise SettingsError("ledger_flush_seconds must be >= 0")
        if self.score_workers < 0 or self.score_shard_files < 1:
            raise SettingsError("score_workers must be >= 0 and score_shard_files >= 1")
        if self.score_workers and self.dask_address.strip():
            raise SettingsError("give score_workers (a local Dask cluster) or dask_address (an existing one), "
                                "not both")
        if self.s3_max_attempts < 1 or self.s3_max_pool_connections < 1:
            raise SettingsError("s3_max_attempts and s3_max_pool_connections must be at least 1")
        if self.s3_connect_timeout <= 0 or self.s3_read_timeout <= 0:
            raise SettingsError("s3_connect_timeout and s3_read_timeout must be positive (seconds)")
        if self.group_by not in ("folder", "none") and not self.group_by.startswith("regex:"):
            raise SettingsError(f"group_by must be 'folder', 'none' or 'regex:PATTERN', not {self.group_by!r}")

    # Fields that say where things are or how scoring runs: changing them does not change the trained model.
    NOT_MODEL = frozenset({"data_url", "synthetic_url", "artifacts_url", "inbox_url", "s3_endpoint_url",
                           "s3_max_attempts", "s3_retry_mode", "s3_connect_timeout", "s3_read_timeout",
                           "s3_max_pool_connections", "work_dir", "webhook_url", "score_batch_size",
                           "ledger_flush_seconds", "ready_marker", "quiet_seconds", "promotion_tolerance",
                           "min_auc", "viewer_url", "score_workers", "dask_address", "score_shard_files"})

    def model_settings(self) -> dict[str, Any]:
        """The settings that shape the trained model (split, augmentation, architecture, training): a retrain on
        unchanged data is only skipped when these are unchanged too."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.NOT_MODEL}

    def public_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict, without anything that could be a secret."""
        d = dataclasses.asdict(self)
        if d.get("webhook_url"):
            d["webhook_url"] = "(set)"
        return d


@dataclass(frozen=True)
class ViewerSettings:
    """The web viewer's own settings (``VIEWER_<NAME>``); where the artifacts are comes from :class:`Settings`."""

    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 8
    # Largest request body (uploads); above it: 413.
    max_content_length: int = 16 * 1024 * 1024
    # Optional shared secret for upload/predict (form field ``token`` or ``Authorization: Bearer``).
    token: str = ""
    # Listings and small JSON files are re-read at most this often (seconds); 0 = on every request.
    refresh_seconds: float = 2.0
    # Rows per batch page (default and upper bound).
    page_size: int = 50
    max_page_size: int = 500
    # Thumbnails: longest side in pixels, JPEG quality, and how many are kept in memory.
    thumb_size: int = 96
    thumb_quality: int = 80
    thumb_cache_entries: int = 4096
    # Parsed batch result tables kept in memory (each 100,000-row table takes some tens of MB).
    table_cache_entries: int = 4
    # Explanation heatmaps: at most this many model views per image, and the longest side shown.
    explain_max_tiles: int = 64
    explain_display_size: int = 448
    # Grad-CAM and the overlay work on a copy of the upload at most this many pixels on its longest side
    # (the score always uses the full image, like batch scoring).
    explain_max_side: int = 1024
    # Uploads decoded, scored and explained at once; how many more may wait for a slot, and for how long.
    # Beyond that: 503 with Retry-After. The defaults leave 2 of the server's 8 threads to the pages.
    predict_concurrency: int = 2
    predict_queue: int = 4
    predict_wait_seconds: float = 60.0
    # Originals decoded for thumbnails at once (the others wait, up to predict_wait_seconds).
    thumb_concurrency: int = 2
    # Where downloaded models are cached when the store is remote (empty: <work_dir>/viewer).
    cache_dir: str = ""
    # Store URL where uploads are kept; empty (default) = uploads are never stored.
    keep_uploads_url: str = ""
    recent_items: int = 8

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> ViewerSettings:
        """Defaults, then ``VIEWER_<NAME>`` variables, then non-None ``overrides``."""
        return cls(**_read(cls, env, "VIEWER_", {}, overrides))


def _read(cls: type, env: dict[str, str] | None, prefix: str, aliases: dict[str, str],
          overrides: dict[str, Any], only: str = "") -> dict[str, Any]:
    """Field values of ``cls`` (or just the field ``only``) from ``<prefix><NAME>`` (or an alias) in ``env``,
    then non-None ``overrides``."""
    env = dict(os.environ if env is None else env)
    names = {f.name for f in fields(cls)}
    values: dict[str, Any] = {}
    for f in fields(cls):
        if only and f.name != only:
            continue
        var = f"{prefix}{f.name.upper()}"
        raw = env.get(var)
        if (raw is None or raw == "") and f.name in aliases:
            var, raw = aliases[f.name], env.get(aliases[f.name])
        if raw is not None and raw != "":
            values[f.name] = _coerce(var, f.type, raw)
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in names:
            raise SettingsError(f"unknown setting {name!r}")
        values[name] = value
    return values


def _coerce(name: str, type_name: Any, raw: str) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(f"environment variable {name} is not a valid {kind}: {raw!r}") from None
    return raw
