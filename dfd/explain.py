"""Explain a score: where in an image the model saw evidence of a deepfake (Grad-CAM), drawn over the image.

The views explained come from :func:`dfd.preprocess.cover_views`, next to the function that cuts the scoring
views, so this module knows nothing of preprocessing modes. TensorFlow and Keras are imported on first use.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from dfd.predict import Predictor
from dfd.preprocess import cover_views


class GradCam:
    """Grad-CAM (Selvaraju et al.) for one loaded predictor: the gradient of the logit of P(deepfake) with
    respect to the last convolutional feature map. The model that gives both is built on first use and kept
    here, next to the predictor, not on it."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.layer = _cam_layer(predictor.model)
        self._model: Any = None

    def heatmap(self, pixels: np.ndarray, max_tiles: int = 64,
                views: np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
        """A heatmap in [0, 1] with the image's shape (H x W), and a note saying how it was made.

        Overlapping views' maps are blended with a centre-weighted window, so tile borders leave no seams.
        ``views`` are the scoring views when the caller has them (a resize model's one view is taken from
        them). The work is bounded by ``max_tiles`` views and by the size of ``pixels`` (the caller shrinks
        big images). Returns ``(None, reason)`` when the model has no spatial layer.
        """
        if self.layer is None:
            return None, "this model has no convolutional layer to explain"
        h, w = pixels.shape[:2]
        cut, boxes, (fh, fw) = cover_views(pixels, self.predictor.spec, max_tiles, views)
        note = "Computed with Grad-CAM from what the model's last image features respond to"
        if fh * fw < h * w:
            note += f", on a copy of the image shrunk to {fw}x{fh} (at most {max_tiles} views)"
        cams = self._cams(cut.astype(np.float32))
        acc = np.zeros((fh, fw))
        cnt = np.full((fh, fw), 1e-9)
        for cam, (y, x, bh, bw) in zip(cams, boxes, strict=True):
            window = 0.05 + np.outer(np.hanning(bh + 2)[1:-1], np.hanning(bw + 2)[1:-1])
            acc[y : y + bh, x : x + bw] += _resize_map(cam, bw, bh) * window
            cnt[y : y + bh, x : x + bw] += window
        heat = _resize_map(acc / cnt, w, h)
        top = float(heat.max())
        return (heat / top if top > 0 else heat), note

    def _cams(self, views: np.ndarray) -> np.ndarray:
        """One class-activation map per view (N, h', w'), non-negative."""
        import keras
        import tensorflow as tf

        if self._model is None:
            model = self.predictor.model
            self._model = keras.Model(model.inputs, [self.layer.output, model.outputs[0]])
        x = tf.convert_to_tensor(views)
        with tf.GradientTape() as tape:
            feats, prob = self._model(x, training=False)
            p = tf.clip_by_value(tf.reshape(prob, [-1]), 1e-6, 1 - 1e-6)
            logit = tf.math.log(p) - tf.math.log(1 - p)
        grads = np.asarray(tape.gradient(logit, feats))
        feats_np = np.asarray(feats)
        weights = grads.mean(axis=(1, 2), keepdims=True)
        return np.maximum((weights * feats_np).sum(axis=-1), 0.0)


def _cam_layer(model: Any) -> Any:
    """The last layer with a spatial (rank-4) output of side >= 4, else the last rank-4 layer."""
    spatial = []
    for layer in model.layers:
        shape = getattr(getattr(layer, "output", None), "shape", None)
        if shape is not None and len(shape) == 4:
            spatial.append((layer, shape))
    if not spatial:
        return None
    big = [layer for layer, shape in spatial if (shape[1] or 0) >= 4]
    return big[-1] if big else spatial[-1][0]


def bounded(pixels: np.ndarray, side: int) -> np.ndarray:
    """``pixels`` itself when its longest side is at most ``side``, else a copy shrunk to fit (area-averaged
    by Pillow's reduce first, so the cost stays close to one pass over the image)."""
    h, w = pixels.shape[:2]
    side = max(1, int(side))
    if max(h, w) <= side:
        return pixels
    img = Image.fromarray(pixels)
    img.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img)


def _resize_map(m: np.ndarray, w: int, h: int) -> np.ndarray:
    img = Image.fromarray(m.astype(np.float32), mode="F")
    return np.asarray(img.resize((max(1, w), max(1, h)), Image.Resampling.BILINEAR), dtype=np.float64)


def _colormap(v: np.ndarray) -> np.ndarray:
    """A blue-to-red ramp (like 'jet', without needing matplotlib) for values in [0, 1]."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay(pixels: np.ndarray, heat: np.ndarray, display_size: int = 448) -> Image.Image:
    """The image with the heatmap blended over it, shrunk so its longest side is ``display_size``.

    The image is shrunk first and the heatmap resized to that size before it is coloured, so the work is
    that of a ``display_size`` image whatever the input's size."""
    base = Image.fromarray(pixels)
    longest = max(base.size)
    if longest < display_size // 2:  # small images are shown larger (pixels kept sharp)
        factor = (display_size // 2) / longest
        base = base.resize((max(1, round(base.width * factor)), max(1, round(base.height * factor))),
                           Image.Resampling.NEAREST)
    base.thumbnail((display_size, display_size), reducing_gap=2.0)
    small = np.clip(_resize_map(heat, base.width, base.height), 0, 1)
    heat_img = Image.fromarray(_colormap(small))
    alpha = Image.fromarray((small * 255).astype(np.uint8))
    alpha = alpha.point(lambda a: int(30 + a * 0.6))  # always a little tint, strong where the evidence is
    return Image.composite(heat_img, base, alpha)


def data_uri(img: Image.Image, fmt: str = "JPEG") -> str:
    """``img`` encoded as a ``data:`` URI, to show in a page without storing it anywhere."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=85)
    mime = "image/jpeg" if fmt == "JPEG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")
