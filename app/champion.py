"""The champion model for the classify page: loaded on first use, reloaded when ``champion.json`` changes.

Scoring goes through :class:`dfd.predict.Predictor` on the full decoded image (the same decoder and the same
:func:`dfd.preprocess.eval_views` as batch scoring), so a score shown here equals the score the batch flow
gives the same file, whatever its size. Everything else is bounded: as soon as the views are cut, the
decoded image is replaced by a copy at most ``explain_side`` pixels on its longest side, which Grad-CAM
(:mod:`dfd.explain`) and the overlay use, and a :class:`~app.gate.Gate` lets only a few uploads do this work
at once (issue 14: a 120 KB PNG of 6000 x 6000 pixels used to take 3 GB and 15 s).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.gate import Gate
from dfd import registry
from dfd.explain import GradCam, bounded, data_uri, overlay
from dfd.imageio import decode_image
from dfd.layout import caveat_needs_run, model_caveat
from dfd.predict import Predictor, load_published
from dfd.storage import StorageError, Store

REAL_SENTENCE = "This is a Real Image!"
FAKE_SENTENCE = "This is a Deepfake Image!"


class NoModel(RuntimeError):
    """There is no champion to score with (the routes answer 503)."""


@dataclass
class Verdict:
    """What the classify page and ``/api/predict`` say about one upload."""

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
    caveat: dict[str, str] | None = None  # what the model's verdicts are worth (dfd.layout.model_caveat)

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
            "model_caveat": self.caveat,
            **({"heatmap": self.heatmap, "heatmap_note": self.heatmap_note} if self.heatmap else {}),
        }


class ModelHolder:
    """Follows the champion: checks the pointer at most every ``refresh`` seconds and takes the champion's
    :class:`~dfd.predict.Predictor` from the process's one model cache (:func:`dfd.predict.load_published`)
    when the version changed. ``gate`` bounds how many uploads are decoded, scored and explained at once (by
    default 2 at a time, 4 waiting)."""

    def __init__(self, store: Store, cache_dir: str, refresh_seconds: float = 2.0, gate: Gate | None = None):
        self.store = store
        self.cache_dir = cache_dir
        self.refresh = refresh_seconds
        self.gate = gate or Gate(2, 4, 60.0)
        self._predictor: Predictor | None = None
        self._gradcam: GradCam | None = None
        self._checked = 0.0
        self._load_lock = threading.Lock()
        self._warm_version: str | None = None
        self._caveat: tuple[str, dict[str, str] | None] | None = None  # (version, its caveat)
        self.run_lock = threading.Lock()  # one inference at a time: the CPU is the bottleneck anyway

    @property
    def loaded_version(self) -> str | None:
        return self._predictor.version if self._predictor is not None else None

    def get(self) -> Predictor:
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
                self._predictor = load_published(self.store, version, self.cache_dir)
            self._checked = time.monotonic()
            return self._predictor

    def caveat(self, predictor: Predictor) -> dict[str, str] | None:
        """The caveat on ``predictor``'s verdicts, once per version: from its metadata, and from its run record
        when the metadata predates the flags (``None`` if that cannot be read: nothing says otherwise)."""
        known = self._caveat
        if known is not None and known[0] == predictor.version:
            return known[1]
        run = None
        if caveat_needs_run(predictor.metadata):
            try:
                run = registry.read_run(self.store, predictor.version)
            except (registry.RegistryError, StorageError):
                run = None
        caveat = model_caveat(predictor.metadata, run)
        self._caveat = (predictor.version, caveat)
        return caveat

    def gradcam(self, predictor: Predictor) -> GradCam:
        """The Grad-CAM explainer of ``predictor``, made once per loaded model."""
        with self._load_lock:
            if self._gradcam is None or self._gradcam.predictor is not predictor:
                self._gradcam = GradCam(predictor)
            return self._gradcam

    def warm(self) -> str:
        """Load the champion and run one small explained prediction through it (once per version), so that
        the first real upload pays for neither; returns the version. Raises :class:`NoModel` and
        :class:`~app.gate.Busy`."""
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
        one slot of :attr:`gate` (raises :class:`~app.gate.Busy` when there is none).

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
                              self.gradcam(predictor).heatmap(small, max_tiles, views=views))
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
                caveat=self.caveat(predictor),
            )
            if heat is not None and small is not None:
                if shrunk and "shrunk" not in note:
                    note += f", on the image shrunk to {small.shape[1]}x{small.shape[0]}"
                verdict.heatmap = data_uri(overlay(small, heat, display_size), "JPEG")
                verdict.heatmap_note = note
            return verdict
