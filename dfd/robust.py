"""Robustness augmentation at training time: the degradations images meet after they are made.

Deepfakes found in the wild have been re-encoded, resized, blurred and colour-adjusted on their way; a
detector that only ever saw pristine files learns traces that one JPEG pass erases. With probability ``p``
each (independently), a training sample is

* down-scaled by a factor in [0.5, 1.0] *before* the crop is cut (as a shared, shrunk image would be),
* colour-jittered (brightness, contrast, saturation),
* Gaussian-blurred (sigma 0.2-1.5),
* re-compressed as JPEG at quality 30-100 (last, as publishing does).

The random draws come from the per-sample generator the training pipeline already uses, so a run is
deterministic for its seed. ``p = 0`` (the default) changes nothing.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from dfd.preprocess import InputSpec, train_view

MIN_SCALE = 0.5
JPEG_QUALITY = (30, 100)
BLUR_SIGMA = (0.2, 1.5)


def downscale(pixels: np.ndarray, factor: float) -> np.ndarray:
    """``pixels`` shrunk by ``factor`` (area-averaging, at least 8 pixels a side)."""
    h, w = pixels.shape[:2]
    size = (max(8, round(w * factor)), max(8, round(h * factor)))
    if size == (w, h):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0))


def jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """``pixels`` after one JPEG encode/decode round trip at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=float(sigma))))


def colour_jitter(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness +-10%, contrast +-20%, saturation +-30%."""
    x = pixels.astype(np.float32)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)  # saturation
    x = x.mean() + (x - x.mean()) * rng.uniform(0.8, 1.2)  # contrast
    x = x * rng.uniform(0.9, 1.1)  # brightness
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def degrade(view: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Colour jitter, blur and JPEG, each with probability ``p`` (same shape and dtype out)."""
    if rng.random() < p:
        view = colour_jitter(view, rng)
    if rng.random() < p:
        view = blur(view, rng.uniform(*BLUR_SIGMA))
    if rng.random() < p:
        view = jpeg(view, int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    return np.ascontiguousarray(view)


def robust_train_view(pixels: np.ndarray, spec: InputSpec, rng: np.random.Generator, p: float,
                      scale_p: float = 0.0, scale_min: float = MIN_SCALE) -> np.ndarray:
    """A training view (see :func:`dfd.preprocess.train_view`) with the degradations above applied.

    ``scale_p`` is the probability of a down-scale alone (both classes alike), on top of the one ``p`` draws:
    images are often resized before they reach a detector, and a model that never saw a resized fake loses
    the full-resolution traces it relied on. ``scale_min`` is the smallest factor of that down-scale."""
    if p <= 0 and scale_p <= 0:
        return train_view(pixels, spec, rng)
    if rng.random() < max(p, scale_p):
        pixels = downscale(pixels, rng.uniform(scale_min if scale_p > 0 else MIN_SCALE, 1.0))
    if p <= 0:
        return train_view(pixels, spec, rng)
    return degrade(train_view(pixels, spec, rng), rng, p)
