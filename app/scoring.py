"""The champion model for the classify page: loaded on first use, reloaded when ``champion.json`` changes,
plus a Grad-CAM explanation heatmap and thumbnails.

Scoring goes through :class:`dfd.predict.Predictor` (the same code path as batch scoring), so a score shown
here equals the score the batch flow gives the same file.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from dfd import registry
from dfd.imageio import decode_image
from dfd.storage import Store

REAL_SENTENCE = "This is a Real Image!"
FAKE_SENTENCE = "This is a Deepfake Image!"


class NoModel(RuntimeError):
    """There is no champion to score with (the routes answer 503)."""


@dataclass
class Verdict:
    label: str
    sentence: str
    score: float
    threshold: float
    model_version: str
    width: int
    height: int
    format: str
    heatmap: str | None = None  # data: URI of the overlay, when asked for
    heatmap_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.sentence,
            "label": self.label,
            "score": self.score,
            "threshold": self.threshold,
            "model_version": self.model_version,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            **({"heatmap": self.heatmap, "heatmap_note": self.heatmap_note} if self.heatmap else {}),
        }


class ModelHolder:
    """Holds the champion's :class:`~dfd.predict.Predictor`; checks the pointer at most every ``refresh``
    seconds and loads a new model only when the champion version changed."""

    def __init__(self, store: Store, cache_dir: str, refresh_seconds: float = 2.0):
        self.store = store
        self.cache_dir = cache_dir
        self.refresh = refresh_seconds
        self._predictor: Any = None
        self._checked = 0.0
        self._load_lock = threading.Lock()
        self.run_lock = threading.Lock()  # one inference at a time: the CPU is the bottleneck anyway

    @property
    def loaded_version(self) -> str | None:
        return self._predictor.version if self._predictor is not None else None

    def get(self) -> Any:
        """The champion's predictor (loading or reloading it if the pointer moved)."""
        now = time.monotonic()
        current = self._predictor
        if current is not None and now - self._checked < self.refresh:
            return current
        with self._load_lock:
            version = registry.champion_version(self.store)
            if version is None:
                raise NoModel("no champion model yet: run the retraining flow first")
            if self._predictor is None or self._predictor.version != version:
                from dfd.predict import Predictor  # imported lazily: TensorFlow loads on first use

                folder = registry.fetch_model_dir(self.store, version, self.cache_dir)
                predictor = Predictor.from_folder(folder)
                predictor.version = version
                self._predictor = predictor
            self._checked = time.monotonic()
            return self._predictor

    def classify(self, data: bytes, max_pixels: int, explain: bool = False, max_tiles: int = 64,
                 display_size: int = 448) -> Verdict:
        """Decode (raises :class:`dfd.imageio.ImageError`), score and optionally explain one upload."""
        decoded = decode_image(data, max_pixels)
        predictor = self.get()
        with self.run_lock:
            score = float(predictor.score_pixels([decoded.pixels])[0])
            heat, note = (gradcam_map(predictor, decoded.pixels, max_tiles) if explain else (None, ""))
        label = predictor.label(score)
        verdict = Verdict(
            label=label,
            sentence=FAKE_SENTENCE if label == "deepfake" else REAL_SENTENCE,
            score=score,
            threshold=float(predictor.threshold),
            model_version=predictor.version,
            width=decoded.width,
            height=decoded.height,
            format=decoded.format,
        )
        if heat is not None:
            verdict.heatmap = data_uri(overlay(decoded.pixels, heat, display_size), "JPEG")
            verdict.heatmap_note = note
        return verdict


# --- Grad-CAM ---------------------------------------------------------------------------------------------
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


def _tiles(h: int, w: int, size: int, max_tiles: int) -> tuple[list[tuple[int, int]], int, int]:
    """Top-left corners of overlapping size x size tiles (stride size/2) covering an image, and the image
    size (height, width) to tile: the original when it fits, grown so its short side is ``size`` when it
    is smaller, shrunk when more than ``max_tiles`` tiles would be needed."""
    grow = max(1.0, size / max(1, min(h, w)))
    scale = grow
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


def gradcam_map(predictor: Any, pixels: np.ndarray, max_tiles: int = 64) -> tuple[np.ndarray | None, str]:
    """A heatmap in [0, 1] with the image's shape (H x W): where the model's evidence for "deepfake" lies.

    Grad-CAM (Selvaraju et al.) on the last convolutional feature map, with the gradient of the logit of
    P(deepfake). Crop models see the image through overlapping native-resolution tiles and the tile maps are
    averaged; resize models see the whole image resized. Returns ``(None, reason)`` when the model has no
    spatial layer.
    """
    import keras
    import tensorflow as tf

    model = predictor.model
    layer = _cam_layer(model)
    if layer is None:
        return None, "this model has no convolutional layer to explain"
    sub = getattr(predictor, "_cam_model", None)  # built once per loaded model
    if sub is None:
        sub = keras.Model(model.inputs, [layer.output, model.outputs[0]])
        predictor._cam_model = sub
    spec = predictor.spec
    size = int(spec["size"])
    h, w = pixels.shape[:2]
    note = f"Grad-CAM on layer {layer.name!r}"
    if spec["mode"] == "resize":
        views = predictor.views(pixels).astype(np.float32)
        corners, work = [(0, 0)], None
    else:
        corners, hh, ww = _tiles(h, w, size, max_tiles)
        work = pixels
        if (hh, ww) != (h, w):
            work = np.asarray(Image.fromarray(pixels).resize((ww, hh), Image.Resampling.BILINEAR))
            if hh * ww < h * w:
                note += f", on the image shrunk to {ww}x{hh} (at most {max_tiles} views)"
        views = np.stack([work[y : y + size, x : x + size] for y, x in corners]).astype(np.float32)
    x = tf.convert_to_tensor(views)
    with tf.GradientTape() as tape:
        feats, prob = sub(x, training=False)
        p = tf.clip_by_value(tf.reshape(prob, [-1]), 1e-6, 1 - 1e-6)
        logit = tf.math.log(p) - tf.math.log(1 - p)
    grads = tape.gradient(logit, feats)
    feats_np, grads_np = np.asarray(feats), np.asarray(grads)
    weights = grads_np.mean(axis=(1, 2), keepdims=True)
    cams = np.maximum((weights * feats_np).sum(axis=-1), 0.0)  # (N, h', w')
    if spec["mode"] == "resize":
        heat = _resize_map(cams[0], w, h)
    else:
        assert work is not None
        acc = np.zeros(work.shape[:2])
        cnt = np.full(work.shape[:2], 1e-9)
        # Blend overlapping tiles with a centre-weighted window so that tile borders leave no seams.
        ramp = np.hanning(size + 2)[1:-1]
        window = 0.05 + np.outer(ramp, ramp)
        for cam, (y, x0) in zip(cams, corners, strict=True):
            acc[y : y + size, x0 : x0 + size] += _resize_map(cam, size, size) * window
            cnt[y : y + size, x0 : x0 + size] += window
        heat = _resize_map(acc / cnt, w, h)
    top = float(heat.max())
    heat = heat / top if top > 0 else heat
    return heat, note


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
    """The image with the heatmap blended over it, shrunk so its longest side is ``display_size``."""
    base = Image.fromarray(pixels)
    heat_img = Image.fromarray(_colormap(heat))
    longest = max(base.size)
    if longest < display_size // 2:  # small images are shown larger (pixels kept sharp)
        factor = (display_size // 2) / longest
        base = base.resize((max(1, round(base.width * factor)), max(1, round(base.height * factor))),
                           Image.Resampling.NEAREST)
    base.thumbnail((display_size, display_size))
    heat_img = heat_img.resize(base.size, Image.Resampling.BILINEAR)
    alpha = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize(base.size)
    alpha = alpha.point(lambda a: int(30 + a * 0.6))  # always a little tint, strong where the evidence is
    return Image.composite(heat_img, base, alpha)


def data_uri(img: Image.Image, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=85)
    mime = "image/jpeg" if fmt == "JPEG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- thumbnails -------------------------------------------------------------------------------------------
class ThumbnailCache:
    """Small JPEG thumbnails made on demand from decoded originals, kept in an LRU keyed by content hash."""

    def __init__(self, entries: int = 4096, size: int = 96, quality: int = 80):
        self.entries = max(1, entries)
        self.size = size
        self.quality = quality
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            return data

    def make(self, key: str, original: bytes, max_pixels: int) -> bytes:
        """The thumbnail for ``original`` (decoded safely; raises :class:`dfd.imageio.ImageError`)."""
        cached = self.get(key)
        if cached is not None:
            return cached
        decoded = decode_image(original, max_pixels)
        img = Image.fromarray(decoded.pixels)
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=self.quality)
        data = buf.getvalue()
        with self._lock:
            self._data[key] = data
            while len(self._data) > self.entries:
                self._data.popitem(last=False)
        return data


def content_key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()
