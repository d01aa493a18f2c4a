"""Augment stage (the seed's "synthetic data"): geometric copies of *training* images only.

Each copy is a random rotation, width/height shift, zoom and horizontal flip of one training image, saved
as PNG (lossless, so no new compression traces) under ``<synthetic>/{real,df}/``. The random parameters
come from a hash of (seed, image content, copy index, settings), so the output is deterministic, and the
file name carries the same hash, so a rerun on unchanged inputs finds every file present and writes
nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import affine_transform

from dfd.data import Item
from dfd.imageio import decode_image
from dfd.storage import Store


@dataclass(frozen=True)
class AugmentParams:
    per_image: int = 1
    rotation: float = 10.0  # degrees, +-
    shift: float = 0.05  # fraction of width/height, +-
    zoom: float = 0.1  # +- relative scale
    flip: bool = True
    seed: int = 42

    def tag(self) -> str:
        blob = json.dumps(self.__dict__, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]


def augment_pixels(pixels: np.ndarray, rng: np.random.Generator, p: AugmentParams) -> np.ndarray:
    """One random affine copy (rotation, shift, zoom, optional flip), edges filled with the nearest pixel."""
    h, w = pixels.shape[:2]
    angle = np.deg2rad(rng.uniform(-p.rotation, p.rotation))
    scale = rng.uniform(1 - p.zoom, 1 + p.zoom)
    ty, tx = rng.uniform(-p.shift, p.shift) * h, rng.uniform(-p.shift, p.shift) * w
    flip = p.flip and rng.random() < 0.5
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    matrix = np.array([[cos, -sin], [sin, cos]])  # output (y, x) -> input (y, x), about the centre
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - matrix @ (centre + np.array([ty, tx]))
    out = np.empty_like(pixels)
    for c in range(3):
        out[..., c] = affine_transform(pixels[..., c], matrix, offset=offset, order=1, mode="nearest")
    return out[:, ::-1] if flip else out


def synthetic_key(item: Item, index: int, params: AugmentParams) -> str:
    return f"{item.label}/{item.sha256[:16]}-{params.tag()}-{index}.png"


def augment_training_split(
    items: list[Item],
    source: Store,
    target: Store,
    params: AugmentParams,
    max_pixels: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Item], int]:
    """Write ``params.per_image`` copies of each training item. Returns (synthetic items, files written)."""
    train = [it for it in items if it.split == "train"]
    synthetic: list[Item] = []
    written = 0
    for n, item in enumerate(train, 1):
        keys = [synthetic_key(item, i, params) for i in range(params.per_image)]
        missing = [i for i, k in enumerate(keys) if not target.exists(k)]
        if missing:
            pixels = decode_image(source.read_bytes(item.key), max_pixels).pixels
            for i in missing:
                digest = hashlib.sha256(f"{params.seed}:{item.sha256}:{i}:{params.tag()}".encode()).digest()
                rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
                buf = io.BytesIO()
                Image.fromarray(augment_pixels(pixels, rng, params)).save(buf, format="PNG")
                target.write_bytes(keys[i], buf.getvalue())
                written += 1
        for k in keys:
            synthetic.append(Item(key=k, label=item.label, sha256="", phash=0, width=item.width,
                                  height=item.height, bytes=0, group=item.group, split="train"))
        if progress and (n % 200 == 0 or n == len(train)):
            progress(n, len(train))
    return synthetic, written
