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


def eval_views(pixels: np.ndarray, spec: InputSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Fixed views of one image for scoring: an array of shape (K, S, S, 3), uint8.

    With ``out`` (a uint8 array of that shape) the views are written into it and it is returned: the batch
    scorer cuts them straight into its batch buffer. ``ValueError`` when ``out`` has another shape.
    """
    size = int(spec["size"])
    pixels = _region(pixels, spec)
    if spec["mode"] == "resize":
        return np.stack([_resize(pixels, size)], out=out)
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
    return np.stack([pixels[y : y + size, x : x + size] for y, x in offsets], out=out)


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


def tile_corners(h: int, w: int, size: int, max_tiles: int) -> tuple[list[tuple[int, int]], int, int]:
    """Top-left corners of overlapping size x size tiles (stride size/2) covering an image, and the image
    size (height, width) to tile: the original when it fits, grown so its short side is ``size`` when it
    is smaller, shrunk when more than ``max_tiles`` tiles would be needed."""
    scale = max(1.0, size / max(1, min(h, w)))
    stride = max(1, size // 2)
    while True:
        hh, ww = max(size, round(h * scale)), max(size, round(w * scale))
        ys = list(range(0, hh - size + 1, stride))
        xs = list(range(0, ww - size + 1, stride))
        if ys[-1] != hh - size:
            ys.append(hh - size)
        if xs[-1] != ww - size:
            xs.append(ww - size)
        if len(ys) * len(xs) <= max_tiles or scale < 0.02:
            return [(y, x) for y in ys for x in xs], hh, ww
        scale *= 0.8


Box = tuple[int, int, int, int]  # (y, x, height, width)


def cover_views(pixels: np.ndarray, spec: InputSpec, max_views: int = 64, views: np.ndarray | None = None
                ) -> tuple[np.ndarray, list[Box], tuple[int, int]]:
    """Views that together cover the image, for explaining its score, and where each one lies.

    Returns the views (N, S, S, 3), each view's box in a frame, and the frame's (height, width). A resize
    model sees the image as one view (its scoring view; ``views[:1]`` when the caller already cut those from
    a larger copy of the image), whose box is the whole frame, the image itself. A crop model sees
    overlapping native-resolution tiles (:func:`tile_corners`); the frame is the image grown or shrunk to
    what was tiled, so at most ``max_views`` views are cut.
    """
    h, w = pixels.shape[:2]
    if spec["mode"] == "resize":
        return (eval_views(pixels, spec) if views is None else views[:1]), [(0, 0, h, w)], (h, w)
    size = int(spec["size"])
    corners, hh, ww = tile_corners(h, w, size, max_views)
    work = pixels
    if (hh, ww) != (h, w):
        work = np.asarray(Image.fromarray(pixels).resize((ww, hh), Image.Resampling.BILINEAR))
    tiles = np.stack([work[y : y + size, x : x + size] for y, x in corners])
    return tiles, [(y, x, size, size) for y, x in corners], (hh, ww)


def center_view(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The single central view (used to monitor validation during training)."""
    return eval_views(pixels, {**spec, "crops": 1})[0]


def larger_than_crop(min_sides: list[int], crop: int) -> bool:
    """Whether images with these shorter sides are clearly larger than one crop (median at least 1.25 crops),
    so that corner views see pixels the centre view does not."""
    return bool(min_sides) and float(np.median(min_sides)) >= 1.25 * crop


def choose_crop_size(min_sides: list[int], max_crop: int, requested: int = 0) -> int:
    """The crop size for a data set: ``requested`` if set, else the largest multiple of 8 up to
    ``max_crop`` that fits inside 95% of the images (at least 16)."""
    if requested:
        return int(requested)
    if not min_sides:
        return max_crop
    fit = int(np.percentile(np.asarray(min_sides), 5))
    return int(max(16, min(max_crop, fit) // 8 * 8))
