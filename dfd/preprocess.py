"""How a decoded image becomes model input: the one place where views (crops or a resize) are cut.

The model itself holds the pixel scaling; this module only chooses *which* pixels it sees. A model's
``input_spec`` (saved in its metadata) says how:

* ``{"mode": "crop", "size": S, "crops": K}``: native-resolution S x S crops, never resized, so that the
  high-frequency traces of manipulation survive. Training takes one random crop per image per epoch;
  scoring averages the model's output over K fixed crops (centre, then the four corners).
* ``{"mode": "resize", "size": S, "crops": 1}``: the whole image resized to S x S (the seed's baseline).

Images smaller than S are padded by mirroring, not up-scaled. With ``"face_crop": true`` in the spec, views
are cut from the largest face found in the image (with a margin; the whole image when none is found), so
training, scoring and the viewer all see the same region.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

InputSpec = dict[str, Any]


def make_spec(mode: str, size: int, crops: int = 1, face_crop: bool = False) -> InputSpec:
    if mode not in ("crop", "resize"):
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    if mode == "resize":
        crops = 1
    if crops not in (1, 5, 9):
        raise ValueError("crops must be 1, 5 or 9")
    spec: InputSpec = {"mode": mode, "size": int(size), "crops": int(crops)}
    if face_crop:
        spec["face_crop"] = True
    return spec


def _region(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The part of the image views are cut from: the largest face when the spec asks for it, else all."""
    if spec.get("face_crop"):
        from dfd.faces import crop_face

        return crop_face(pixels)
    return pixels


def _pad_to(pixels: np.ndarray, size: int) -> np.ndarray:
    h, w = pixels.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if ph == 0 and pw == 0:
        return pixels
    # 'symmetric' mirrors without needing the image to be larger than the pad.
    while ph or pw:
        h, w = pixels.shape[:2]
        sh, sw = min(ph, h), min(pw, w)
        pixels = np.pad(pixels, ((sh // 2, sh - sh // 2), (sw // 2, sw - sw // 2), (0, 0)), mode="symmetric")
        ph, pw = ph - sh, pw - sw
    return pixels


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))


def eval_views(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Fixed views of one image for scoring: an array of shape (K, S, S, 3), uint8."""
    size = int(spec["size"])
    pixels = _region(pixels, spec)
    if spec["mode"] == "resize":
        return _resize(pixels, size)[None]
    pixels = _pad_to(pixels, size)
    h, w = pixels.shape[:2]
    ys = [(h - size) // 2]
    xs = [(w - size) // 2]
    k = int(spec.get("crops", 1))
    offsets = [(ys[0], xs[0])]
    if k >= 5:
        offsets += [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size)]
    if k >= 9:
        offsets += [(0, xs[0]), (h - size, xs[0]), (ys[0], 0), (ys[0], w - size)]
    return np.stack([pixels[y : y + size, x : x + size] for y, x in offsets])


def train_view(pixels: np.ndarray, spec: InputSpec, rng: np.random.Generator) -> np.ndarray:
    """One random view for training: a random crop (or the resize) and a random horizontal flip."""
    size = int(spec["size"])
    pixels = _region(pixels, spec)
    if spec["mode"] == "resize":
        view = _resize(pixels, size)
    else:
        pixels = _pad_to(pixels, size)
        h, w = pixels.shape[:2]
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        view = pixels[y : y + size, x : x + size]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return np.ascontiguousarray(view)


def center_view(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The single central view (used to monitor validation during training)."""
    return eval_views(pixels, {**spec, "crops": 1})[0]


def choose_crop_size(min_sides: list[int], max_crop: int, requested: int = 0) -> int:
    """The crop size for a data set: ``requested`` if set, else the largest multiple of 8 up to
    ``max_crop`` that fits inside 95% of the images (at least 16)."""
    if requested:
        return int(requested)
    if not min_sides:
        return max_crop
    fit = int(np.percentile(np.asarray(min_sides), 5))
    return int(max(16, min(max_crop, fit) // 8 * 8))
