"""The scoring pipeline: files through read -> hash -> decode -> views (parallel, in tf.data) -> batched inference.

Only a bounded number of images is alive at a time: one decoded image per worker, plus the views of
``batch_size`` images times the prefetch depth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from dfd import pipeline
from dfd.scoring.reader import Outcome, Reader, Status
from dfd.storage import ObjectInfo, Store


def _pack(idx: np.ndarray, views: np.ndarray, outcomes: list[Outcome]) -> tuple[np.ndarray, ...]:
    """A chunk's outcomes as the arrays tf.data carries (``_unpack`` is the way back)."""
    return (
        idx.astype(np.int64),
        views,
        np.array([o.status for o in outcomes], np.int32),
        np.array([o.sha256.encode() for o in outcomes], dtype=object),
        np.array([o.width or 0 for o in outcomes], np.int32),
        np.array([o.height or 0 for o in outcomes], np.int32),
        np.array([o.error.encode("utf-8", "backslashreplace") for o in outcomes], dtype=object),
        np.array([o.nbytes for o in outcomes], np.int64),
    )


def _unpack(arrays: tuple[np.ndarray, ...], scores: np.ndarray) -> list[Outcome]:
    idx, _, status, sha, width, height, err, nbytes = arrays
    return [
        Outcome(
            index=int(idx[j]),
            status=Status(int(status[j])),
            sha256=sha[j].decode(),
            width=int(width[j]) or None,
            height=int(height[j]) or None,
            error=err[j].decode("utf-8", "replace"),
            nbytes=int(nbytes[j]),
            score=None if status[j] != Status.OK else float(scores[j]),
        )
        for j in range(len(idx))
    ]


def stream_scores(
    store: Store,
    items: list[ObjectInfo],
    predictor: Any,
    batch_size: int,
    known: Callable[[str], bool],
    max_bytes: int,
    chunk: int | None = None,
    parallel: int | None = None,
) -> Iterator[list[Outcome]]:
    """Stream ``items`` through the pipeline; yields the :class:`Outcome` of each file of a finished batch.

    The parallel map (``parallel`` workers, default one per core) works on chunks of up to 32 files
    (``chunk``) to keep tf.data's per-call overhead low. ``known(sha)`` says whether that content is already
    scored with this model (then it is not decoded).
    """
    import tensorflow as tf

    reader = Reader(store, predictor, known, max_bytes)
    view_shape = reader.view_shape
    workers = max(1, int(parallel or pipeline.cpu_cores()))
    if chunk is None:  # big enough to keep per-call overhead low, small enough to spread a small folder
        chunk = math.ceil(len(items) / (4 * workers))
    chunk = max(1, min(int(chunk), int(batch_size), 32))

    def load_chunk(idx: np.ndarray) -> tuple[np.ndarray, ...]:
        views = np.zeros((len(idx), *view_shape), np.uint8)
        return _pack(idx, views, [reader.read(int(i), items[int(i)], views[j]) for j, i in enumerate(idx)])

    touts = [tf.int64, tf.uint8, tf.int32, tf.string, tf.int32, tf.int32, tf.string, tf.int64]

    def tf_load(idx: Any) -> tuple[Any, ...]:
        out = tf.numpy_function(load_chunk, [idx], touts, stateful=False)
        out[1].set_shape((None, *view_shape))
        for t in (out[0], out[2], out[3], out[4], out[5], out[6], out[7]):
            t.set_shape((None,))
        return tuple(out)

    ds = tf.data.Dataset.range(len(items)).batch(chunk)
    ds = ds.map(tf_load, num_parallel_calls=workers, deterministic=False)
    ds = pipeline.fixed(ds.unbatch().batch(max(1, int(batch_size))).prefetch(pipeline.PREFETCH_BATCHES))
    size = view_shape[1]
    for arrays in ds.as_numpy_iterator():
        views, ok = arrays[1], arrays[2] == Status.OK
        if ok.all():  # the common case: the uint8 views as they came, no copy (see Predictor._forward)
            scores = predictor.score_views(views.reshape(-1, size, size, 3))
        else:
            scores = np.full(len(ok), np.nan)
            if ok.any():
                scores[ok] = predictor.score_views(views[ok].reshape(-1, size, size, 3))
        yield _unpack(arrays, scores)
