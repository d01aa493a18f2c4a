"""Score decoded images with a saved model: the code path shared by evaluation, batch scoring and the viewer.

The score of an image is the mean of the model's P(deepfake) over the image's views (see
:mod:`dfd.preprocess`), then calibrated with the temperature stored in the metadata (1.0 = none).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfd.imageio import DEFAULT_MAX_PIXELS
from dfd.preprocess import eval_views

if TYPE_CHECKING:
    from dfd.storage import Store


class Predictor:
    """A loaded model plus its metadata; turns decoded pixels into fake probabilities."""

    def __init__(self, model: Any, metadata: dict[str, Any]):
        self.model = model
        self.metadata = metadata
        self.spec = metadata["input_spec"]
        self.threshold = float(metadata["threshold"])
        self.version = str(metadata.get("version", "unversioned"))
        self.temperature = float(metadata.get("temperature", 1.0) or 1.0)
        self.max_pixels = int(metadata.get("max_image_pixels", DEFAULT_MAX_PIXELS))
        self._compiled: dict[np.dtype, Any] = {}  # one traced graph per input dtype (uint8, float32)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Predictor:
        from dfd.model import load_model

        model, metadata = load_model(folder)
        return cls(model, metadata)

    @property
    def views_per_image(self) -> int:
        return int(self.spec.get("crops", 1))

    def views(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The views this model scores of decoded ``pixels`` (into ``out`` when given, see ``eval_views``)."""
        return eval_views(pixels, self.spec, out=out)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for a batch of views, through one traced graph (about 2x faster than eager).

        Views cut from decoded images are uint8 and go into the graph as they are: the cast to float32 is the
        graph's first op, so the output is the same as for float32 views, and a quarter of the bytes is copied
        (converting the five views of a 250 px image to float32 in numpy took up to 0.6 ms of the scorer's main
        thread, docs/SCALING.md). Other dtypes are scored as float32.
        """
        if batch.dtype != np.uint8:
            batch = batch.astype(np.float32, copy=False)
        forward = self._compiled.get(batch.dtype)
        if forward is None:
            import tensorflow as tf

            size, model = int(self.spec["size"]), self.model
            forward = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False),
                                  input_signature=[tf.TensorSpec([None, size, size, 3], batch.dtype.name)])
            self._compiled[batch.dtype] = forward
        out = forward(batch)
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def calibrate(self, view_probs: np.ndarray) -> np.ndarray:
        """Average view probabilities per image in logit space, then apply the temperature."""
        p = np.clip(view_probs, 1e-6, 1 - 1e-6)
        logits = np.log(p / (1 - p)).reshape(-1, self.views_per_image).mean(axis=1)
        return 1.0 / (1.0 + np.exp(-logits / self.temperature))

    def score_views(self, views: np.ndarray) -> np.ndarray:
        """Scores for a stack of views, K per image in order: returns one score per image."""
        if len(views) == 0:
            return np.zeros(0)
        return self.calibrate(self._forward(views))

    def score_pixels(self, images: Iterable[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Scores for decoded RGB images, batched."""
        out: list[np.ndarray] = []
        for chunk in _chunks(images, max(1, batch_size)):
            out.append(self.score_views(np.concatenate([self.views(p) for p in chunk])))
        return np.concatenate(out) if out else np.zeros(0)

    def label(self, score: float) -> str:
        return "deepfake" if score >= self.threshold else "real"


_LOADED: dict[tuple[str, str], Predictor] = {}
_LOAD_LOCK = threading.Lock()


def load_published(store: Store, version: str, cache_dir: str | Path) -> Predictor:
    """The predictor of the published ``version`` in the artifact store ``store``, loaded once per process.

    The one model cache of the process, shared by batch scoring and the viewer. It keeps only the model
    asked for last (a model takes hundreds of MB); ``cache_dir`` holds downloads from a remote store.
    Raises :class:`dfd.registry.RegistryError` for an unknown or incomplete version.
    """
    from dfd.registry import fetch_model_dir

    key = (store.url, version)
    with _LOAD_LOCK:
        predictor = _LOADED.get(key)
        if predictor is None:
            predictor = Predictor.from_folder(fetch_model_dir(store, version, cache_dir))
            predictor.version = version
            _LOADED.clear()
            _LOADED[key] = predictor
        return predictor


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
