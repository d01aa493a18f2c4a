"""Small builders shared by the tests: tiny image sets and a tiny published model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dfd.demo import synthetic_photo, upsampling_fake


def png_bytes(pixels: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_dataset(root: Path, per_class: int = 12, size: int = 48, seed: int = 0, fmt: str = "PNG") -> Path:
    """Write ``per_class`` real (smooth synthetic photos) and fake (up-sampling traces) images."""
    rng = np.random.default_rng(seed)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    for label in ("real", "df"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = synthetic_photo(rng, size)
            if label == "df":
                img = upsampling_fake(img, rng)
            (root / label / f"{label}_{i:03d}.{ext}").write_bytes(png_bytes(img, fmt))
    return root


def train_tiny_model(size: int = 32, per_class: int = 24, epochs: int = 3, seed: int = 0, arch: str = "patchnet"):
    """A small model fitted in a few seconds on in-memory synthetic views (returns model, metadata)."""
    from dfd.model import build_model, input_spec_for

    rng = np.random.default_rng(seed)
    spec = input_spec_for(arch, size, eval_crops=1)
    s = spec["size"]
    x, y = [], []
    for label in (0, 1):
        for _ in range(per_class):
            img = synthetic_photo(rng, s)
            x.append(upsampling_fake(img, rng) if label else img)
            y.append(label)
    model = build_model(arch, s, width=8, seed=seed)
    model.fit(np.stack(x).astype("float32"), np.array(y, dtype="float32"), epochs=epochs, batch_size=16, verbose=0)
    metadata = {
        "input_spec": spec,
        "threshold": 0.5,
        "class_names": ["real", "deepfake"],
        "arch": arch,
        "temperature": 1.0,
        "metrics": {"test": {"roc_auc": 0.9, "accuracy": 0.8}},
        "data_fingerprint": "0" * 64,
    }
    return model, metadata


def publish_tiny_model(artifacts: Path | str, version: str = "20260101-000000-tiny00", champion: bool = True,
                       **kw) -> str:
    """Train a tiny model, publish it as ``version`` in the artifact store, and make it champion."""
    import tempfile

    from dfd.model import save_model
    from dfd.registry import publish_run, set_champion
    from dfd.storage import open_store

    model, metadata = train_tiny_model(**kw)
    metadata["version"] = version
    store = open_store(str(artifacts))
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, metadata, tmp)
        publish_run(store, version, tmp)
    store.write_json(f"runs/{version}/run.json", {"version": version, "decision": "promoted", "test_auc": 0.9})
    if champion:
        set_champion(store, version, reason="test fixture")
    return version
