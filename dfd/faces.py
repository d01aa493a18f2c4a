"""Face-aware preprocessing: find the largest frontal face and crop to it with a margin.

Face-swap traces live on and around the face; the background is noise to a detector trained on faces.
OpenCV's bundled Haar cascade (``haarcascade_frontalface_default.xml``, shipped inside
opencv-python-headless) finds faces without any download. Detection runs on a copy shrunk to at most
``DETECT_SIDE`` pixels for speed; the crop is taken from the full-resolution pixels so native-resolution
traces survive. When no face is found the whole image is returned, so a face-less image is still scored.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

MARGIN = 0.3  # of the face box's size, added on each side
DETECT_SIDE = 384
MIN_FACE_FRACTION = 0.1  # smallest face searched for, as a fraction of the image's shorter side
MIN_SIDE = 32  # the cascade's window is 24 x 24; smaller images are returned whole

_local = threading.local()
_boxes: OrderedDict[bytes, list[tuple[int, int, int, int]]] = OrderedDict()  # content digest -> boxes
_CACHE_SIZE = 50_000
_lock = threading.Lock()


def _cascade():
    """One classifier per thread: the tf.data pipeline and the scorer call this from several threads."""
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        import cv2

        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
        if cascade.empty():
            raise RuntimeError("OpenCV's frontal-face Haar cascade could not be loaded")
        _local.cascade = cascade
    return cascade


def detect_faces(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Face boxes ``(x, y, w, h)`` in ``pixels``' coordinates, largest first.

    Results are remembered per image content (training sees each image once per epoch)."""
    pixels = np.ascontiguousarray(pixels)
    key = hashlib.blake2b(pixels.data, digest_size=16, person=str(pixels.shape).encode()[:16]).digest()
    with _lock:
        if key in _boxes:
            _boxes.move_to_end(key)
            return list(_boxes[key])
    boxes = _detect(pixels)
    with _lock:
        _boxes[key] = boxes
        if len(_boxes) > _CACHE_SIZE:
            _boxes.popitem(last=False)
    return list(boxes)


def _detect(pixels: np.ndarray) -> list[tuple[int, int, int, int]]:
    import cv2

    h, w = pixels.shape[:2]
    if min(h, w) < MIN_SIDE:
        return []
    scale = min(1.0, DETECT_SIDE / max(h, w))
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    if scale < 1.0:
        grey = cv2.resize(grey, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    smallest = max(24, int(MIN_FACE_FRACTION * min(grey.shape)))
    found = _cascade().detectMultiScale(grey, scaleFactor=1.15, minNeighbors=5, minSize=(smallest, smallest))
    boxes = [tuple(int(round(v / scale)) for v in box) for box in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))


def face_box(pixels: np.ndarray, margin: float = MARGIN) -> tuple[int, int, int, int] | None:
    """The crop ``(x0, y0, x1, y1)`` around the largest face plus ``margin``, clipped to the image."""
    boxes = detect_faces(pixels)
    if not boxes:
        return None
    x, y, w, h = boxes[0]
    H, W = pixels.shape[:2]
    mx, my = int(w * margin), int(h * margin)
    return max(0, x - mx), max(0, y - my), min(W, x + w + mx), min(H, y + h + my)


def crop_face(pixels: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """The largest face with a margin, or the whole image when no face is found."""
    box = face_box(pixels, margin)
    if box is None:
        return pixels
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(pixels[y0:y1, x0:x1])
