"""The champion model for the classify page: loaded on first use, reloaded when ``champion.json`` changes,
plus a Grad-CAM explanation heatmap and thumbnails.

Scoring goes through :class:`dfd.predict.Predictor` on the full decoded image (the same decoder and the same
:func:`dfd.preprocess.eval_views` as batch scoring), so a score shown here equals the score the batch flow
gives the same file, whatever its size. Everything else is bounded: as soon as the views are cut, the
decoded image is replaced by a copy at most ``explain_side`` pixels on its longest side, which Grad-CAM and
the overlay use, and a :class:`Gate` lets only a few uploads do this work at once (issue 14: a 120 KB PNG of
6000 x 6000 pixels used to take 3 GB and 15 s).
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
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


class Busy(RuntimeError):
    """Too many uploads are being classified or waiting; try again after ``retry_after`` seconds (503)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Gate:
    """At most ``slots`` callers inside at once; at most ``queue`` more wait, each up to ``wait_seconds``.

    A caller that finds the queue full, or waits too long, gets :class:`Busy` with a Retry-After estimate
    (the recent mean time inside, times the callers ahead of it per slot). This bounds the memory and CPU
    that uploads can take, and keeps server threads free for the pages.
    """

    def __init__(self, slots: int, queue: int, wait_seconds: float, what: str = "uploads"):
        self.slots = max(1, int(slots))
        self.queue = max(0, int(queue))
        self.wait_seconds = max(0.0, float(wait_seconds))
        self.what = what
        self._sem = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self._waiting = 0
        self._mean_s = 1.0  # moving average of the time spent inside

    @property
    def waiting(self) -> int:
        return self._waiting

    def retry_after(self) -> int:
        """Seconds after which a refused caller may find a slot."""
        ahead = self._waiting + self.slots
        return int(min(300, max(1, math.ceil(self._mean_s * ahead / self.slots))))

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the ``with`` block (raises :class:`Busy` when none can be had)."""
        if not self._sem.acquire(blocking=False):
            with self._lock:
                if self._waiting >= self.queue:
                    raise Busy(f"the server is busy: {self.slots} {self.what} in progress and "
                               f"{self._waiting} waiting; try again shortly", self.retry_after())
                self._waiting += 1
            try:
                got = self._sem.acquire(timeout=self.wait_seconds)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not got:
                raise Busy(f"the server is busy: no slot for these {self.what} within {self.wait_seconds:g} s; "
                           "try again shortly", self.retry_after())
        start = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - start
            with self._lock:
                self._mean_s = 0.7 * self._mean_s + 0.3 * elapsed
            self._sem.release()


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
    seconds and loads a new model only when the champion version changed. ``gate`` bounds how many uploads
    are decoded, scored and explained at once (by default 2 at a time, 4 waiting)."""

    def __init__(self, store: Store, cache_dir: str, refresh_seconds: float = 2.0, gate: Gate | None = None):
        self.store = store
        self.cache_dir = cache_dir
        self.refresh = refresh_seconds
        self.gate = gate or Gate(2, 4, 60.0)
        self._predictor: Any = None
        self._checked = 0.0
        self._load_lock = threading.Lock()
        self._warm_version: str | None = None
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

    def warm(self) -> str:
        """Load the champion and run one small explained prediction through it (once per version), so that
        the first real upload pays for neither; returns the version. Raises :class:`NoModel`, :class:`Busy`."""
        predictor = self.get()
        if self._warm_version != predictor.version:
            side = 2 * int(predictor.spec["size"])
            ramp = np.linspace(0, 255, side).astype(np.uint8)
            pixels = np.full((side, side, 3), 128, np.uint8)
            pixels[..., 0], pixels[..., 1] = ramp[:, None], ramp[None, :]
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            self.classify(buf.getvalue(), side * side, explain=True)
            self._warm_version = predictor.version
        return str(predictor.version)

    def classify(self, data: bytes, max_pixels: int, explain: bool = False, max_tiles: int = 64,
                 display_size: int = 448, explain_side: int = 1024) -> Verdict:
        """Decode (raises :class:`dfd.imageio.ImageError`), score and optionally explain one upload, inside
        one slot of :attr:`gate` (raises :class:`Busy` when there is none).

        The score uses the full decoded image (batch parity); the heatmap and overlay use a copy shrunk to
        at most ``explain_side`` pixels, made before the full image is dropped."""
        with self.gate.slot():
            predictor = self.get()
            decoded = decode_image(data, max_pixels)
            width, height, fmt = decoded.width, decoded.height, decoded.format
            views = predictor.views(decoded.pixels)  # the views batch scoring cuts, from the same pixels
            small = bounded(decoded.pixels, explain_side) if explain else None
            shrunk = small is not None and small.shape[:2] != decoded.pixels.shape[:2]
            del decoded  # the full image is not needed past this point
            with self.run_lock:
                score = float(predictor.score_views(views)[0])
                heat, note = ((None, "") if small is None else
                              gradcam_map(predictor, small, max_tiles, views=views))
            label = predictor.label(score)
            verdict = Verdict(
                label=label,
                sentence=FAKE_SENTENCE if label == "deepfake" else REAL_SENTENCE,
                score=score,
                threshold=float(predictor.threshold),
                model_version=predictor.version,
                width=width,
                height=height,
                format=fmt,
            )
            if heat is not None and small is not None:
                if shrunk and "shrunk" not in note:
                    note += f", on the image shrunk to {small.shape[1]}x{small.shape[0]}"
                verdict.heatmap = data_uri(overlay(small, heat, display_size), "JPEG")
                verdict.heatmap_note = note
            return verdict


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


def gradcam_map(predictor: Any, pixels: np.ndarray, max_tiles: int = 64,
                views: np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
    """A heatmap in [0, 1] with the image's shape (H x W): where the model's evidence for "deepfake" lies.

    Grad-CAM (Selvaraju et al.) on the last convolutional feature map, with the gradient of the logit of
    P(deepfake). Crop models see the image through overlapping native-resolution tiles and the tile maps are
    averaged; resize models see the whole image resized (``views``, when given, are used as that view: the
    ones cut from the full image for scoring). Returns ``(None, reason)`` when the model has no spatial layer.
    The work is bounded by ``max_tiles`` views and by the size of ``pixels`` (the caller shrinks big images).
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
        views = (predictor.views(pixels) if views is None else views[:1]).astype(np.float32)
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
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format=fmt, quality=85)
    mime = "image/jpeg" if fmt == "JPEG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- thumbnails -------------------------------------------------------------------------------------------
class ThumbnailCache:
    """Small JPEG thumbnails made on demand from decoded originals, kept in an LRU keyed by content hash."""

    def __init__(self, entries: int = 4096, size: int = 96, quality: int = 80, gate: Gate | None = None):
        self.entries = max(1, entries)
        self.size = size
        self.quality = quality
        self.gate = gate or Gate(2, 1024, 60.0, what="thumbnails")  # bounds decodes of big originals at once
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            return data

    def make(self, key: str, original: bytes, max_pixels: int) -> bytes:
        """The thumbnail for ``original`` (decoded safely; raises :class:`dfd.imageio.ImageError`, or
        :class:`Busy` when too many are being made). At most ``gate.slots`` originals are decoded at once, and
        big ones are shrunk by area-averaging before the final LANCZOS pass (``reducing_gap``)."""
        cached = self.get(key)
        if cached is not None:
            return cached
        with self.gate.slot():
            img = Image.fromarray(decode_image(original, max_pixels).pixels)
            img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS, reducing_gap=2.0)
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
