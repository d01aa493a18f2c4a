"""Thumbnails of a batch's scored originals: small JPEGs made on demand (the originals are never served)."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict

from PIL import Image

from app.gate import Gate
from dfd.imageio import decode_image


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
        :class:`~app.gate.Busy` when too many are being made). At most ``gate.slots`` originals are decoded at
        once, and big ones are shrunk by area-averaging before the final LANCZOS pass (``reducing_gap``)."""
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
    """A stable cache key (and ETag) for what a thumbnail is made from."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()
