"""The decode stage: one file read, hashed, decoded and cut into the model's views, with what came of it.

Runs in the pipeline's parallel workers (:mod:`dfd.scoring.stream`). A file never raises here: whatever goes
wrong becomes an :class:`Outcome` with a status and a one-line error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import numpy as np

from dfd.imageio import ImageError, decode_image, image_size, read_input
from dfd.scoring.errors import error_text, short
from dfd.storage import ObjectInfo, Store


class Status(IntEnum):
    """What the decode stage made of one file (an int, so that it travels through tf.data)."""

    OK = 0  # decoded: its views are ready for the model
    CACHED = 1  # its content is in the ledger already: not decoded
    BAD_CONTENT = 2  # read, but not a usable image: an error row, kept in the ledger
    READ_ERROR = 3  # could not be read: an error row, not kept (so it is retried next run)


@dataclass(frozen=True)
class Outcome:
    """One file through the pipeline: what was read, and, for status OK, the model's score."""

    index: int  # position in the list of files given to the pipeline
    status: Status
    sha256: str = ""
    width: int | None = None  # as stored, before EXIF rotation
    height: int | None = None
    error: str = ""
    nbytes: int = -1  # bytes read (-1: unreadable); differs from the listing when the file changed meanwhile
    score: float | None = None

    def scored(self, score: float) -> Outcome:
        return replace(self, score=score)


@dataclass(frozen=True)
class Reader:
    """Reads files of ``store`` for ``predictor``; ``known(sha)`` says whether that content is already scored
    with this model (then it is not decoded)."""

    store: Store
    predictor: Any
    known: Callable[[str], bool]
    max_bytes: int

    @property
    def view_shape(self) -> tuple[int, int, int, int]:
        size = int(self.predictor.spec["size"])
        return (self.predictor.views_per_image, size, size, 3)

    def read(self, index: int, obj: ObjectInfo, views_out: np.ndarray) -> Outcome:
        """Fill ``views_out`` with the views of file ``obj`` when it decodes; say what came of it."""
        try:
            data = read_input(self.store, obj, self.max_bytes)
        except ImageError as exc:
            return Outcome(index, Status.READ_ERROR, error=error_text(exc))
        except Exception as exc:  # noqa: BLE001 - one odd file must never stop the batch
            return Outcome(index, Status.READ_ERROR, error=f"unreadable: {short(exc, 100)}")
        read = Outcome(index, Status.OK, hashlib.sha256(data).hexdigest(), nbytes=len(data))
        if self.known(read.sha256):
            return replace(read, status=Status.CACHED)
        try:
            decoded = decode_image(data, self.predictor.max_pixels)
            # straight into the batch buffer (no copy per file); views of another shape than the model's are
            # refused by np.stack (ValueError, an "unreadable image" row below), never half-written
            self.predictor.views(decoded.pixels, out=views_out)
            return replace(read, width=decoded.width or None, height=decoded.height or None)
        except ImageError as exc:
            w, h = image_size(data) or (0, 0)
            return replace(read, status=Status.BAD_CONTENT, width=w or None, height=h or None, error=error_text(exc))
        except MemoryError:
            return replace(read, status=Status.BAD_CONTENT, error="too large: out of memory while decoding")
        except Exception as exc:  # noqa: BLE001
            return replace(read, status=Status.BAD_CONTENT, error=f"unreadable image: {short(exc, 100)}")
