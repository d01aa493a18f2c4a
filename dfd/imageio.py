"""Safe image reading and decoding shared by training, batch scoring and the viewer.

:func:`read_input` reads one input file from a store (refusing special files before a byte is read), and
:func:`decode_image` turns file bytes into an RGB ``uint8`` array; both raise :class:`ImageError` with a
short reason. Decoding applies EXIF orientation, converts every mode (L, LA, P, RGBA, CMYK, 16-bit) to RGB,
takes the first frame of an animation, and refuses decompression bombs (over the configured limit, which
the error quotes) before decoding any pixels.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from struct import error as struct_error  # raised by some truncated TIFF/BMP files

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dfd.storage import NotAFile, ObjectInfo, StorageError, Store, TooLarge

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
# The only decoders Pillow may pick (JPEG includes camera JPEGs with a second picture, MPO). Any other format
# is "not an image": an EPS file under a .jpg name must never reach Ghostscript, which Pillow would run on
# it, and formats nobody trains on are only attack surface.
DECODER_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """A file that cannot be used as an image. ``reason`` is short and stable enough to group by."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    pixels: np.ndarray  # H x W x 3, uint8, RGB, EXIF orientation applied
    width: int  # as stored in the file, before orientation
    height: int
    format: str
    mode: str


def has_image_extension(name: str) -> bool:
    """True when the file name ends in a supported image extension (case-insensitive)."""
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode image bytes to RGB uint8, or raise :class:`ImageError` with the reason."""
    if not data:
        raise ImageError("zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=DECODER_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError("too large", f"{width}x{height} is over the limit of {max_pixels:,} pixels")
            fmt = img.format or "?"
            mode = img.mode
            if getattr(img, "is_animated", False):
                img.seek(0)
            img.load()
            # in place: otherwise Pillow returns a copy even when there is nothing to turn (nearly always), one
            # more full-image allocation and copy per file (0.18 ms for a 250 px image, docs/SCALING.md)
            ImageOps.exif_transpose(img, in_place=True)
            rgb = _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own check fired before ours (its limit is above ours): quote the configured limit.
        raise ImageError("too large", _over_limit(str(exc), max_pixels)) from None
    except UnidentifiedImageError:
        raise ImageError("not an image", "no known image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error) as exc:
        text = str(exc)
        if ("truncated" in text.lower() or "broken data stream" in text or isinstance(exc, EOFError)
                or _short_riff(data)):
            raise ImageError("truncated", text) from None
        raise ImageError("unreadable image", text[:200]) from None
    pixels = np.asarray(rgb, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ImageError("unreadable image", f"unexpected pixel shape {pixels.shape}")
    return Decoded(pixels=pixels, width=width, height=height, format=fmt, mode=mode)


def _short_riff(data: bytes) -> bool:
    """True for a WebP (RIFF) file shorter than its header says: Pillow only reports that it "could not
    create decoder object", which would hide that the file was cut short."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return False
    return len(data) < 8 + int.from_bytes(data[4:8], "little")


def _over_limit(pillow_message: str, max_pixels: int) -> str:
    """The "too large" detail for a decompression-bomb error from Pillow, naming ``max_pixels`` (the configured
    limit, ``DFD_MAX_IMAGE_PIXELS``) rather than Pillow's built-in one."""
    m = re.search(r"\((\d+) pixels\)", pillow_message)
    size = f"{int(m.group(1)):,} pixels" if m else "the image"
    return f"{size} is over the limit of {max_pixels:,} pixels"


def read_input(store: Store, obj: ObjectInfo, max_bytes: int) -> bytes:
    """The file's bytes, or :class:`ImageError` with reason ``unreadable``/``file too large``.

    Training and batch scoring both read their inputs here, so the same file gets the same reason in both.
    On a local store, anything that is not a regular file (a FIFO, a device, a broken or looping symlink)
    is refused before a byte is read, so that it can neither block nor surprise the run.
    """
    if obj.size > max_bytes:
        raise ImageError("file too large", f"{obj.size:,} bytes is over the limit of {max_bytes:,}")
    try:
        return store.read_limited(obj.key, max_bytes)
    except TooLarge as exc:
        raise ImageError("file too large", str(exc)) from None
    except NotAFile:
        raise ImageError("unreadable", "not a regular file") from None
    except StorageError as exc:
        raise ImageError("unreadable", _storage_reason(exc)) from None
    except FileNotFoundError:  # listed a moment ago: as a remote store says it (NotFound, above)
        raise ImageError("unreadable", "vanished while being read") from None
    except OSError as exc:
        raise ImageError("unreadable", (exc.strerror or str(exc)).lower()) from None


def _storage_reason(exc: Exception) -> str:
    """A short reason for a storage error met while reading one input."""
    text = str(exc)
    low = text.lower()
    if "loop" in low:
        return "symlink loop"
    if "leaves the store" in low:
        return "link points outside the folder"
    if "not found" in low:
        return "vanished while being read"
    return _shorten(text.rsplit(": ", 1)[-1].lower(), 100)


def _shorten(text: str, limit: int = 160) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode != "I" or arr.max(initial=0) > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=1))
        arr8 = np.clip((arr - lo) / max(hi - lo, 1e-9) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header only, or ``None`` when it cannot be read."""
    try:
        with Image.open(io.BytesIO(data), formats=DECODER_FORMATS) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any failure means "unknown size"
        return None


def encode_like(pixels: np.ndarray, source: bytes) -> bytes:
    """Encode ``pixels`` the way ``source`` was encoded: a JPEG source gives a JPEG with the same quantisation
    tables and chroma subsampling, anything else a lossless PNG.

    Images made from real ones (synthetic fakes) must not differ from them by file format or compression
    level, or a detector learns the format instead of the manipulation.
    """
    from PIL import JpegImagePlugin

    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    try:
        with Image.open(io.BytesIO(source)) as src:
            if src.format == "JPEG" and src.quantization:
                sampling = JpegImagePlugin.get_sampling(src)
                img.save(buf, format="JPEG", qtables=src.quantization,
                         subsampling=sampling if sampling >= 0 else 0)
                return buf.getvalue()
    except (OSError, ValueError, SyntaxError):  # not readable as an image: fall back to lossless
        pass
    img.save(buf, format="PNG")
    return buf.getvalue()


def suffix_like(key: str) -> str:
    """The file suffix :func:`encode_like` output gets for a source named ``key``."""
    return ".jpg" if key.lower().endswith((".jpg", ".jpeg")) else ".png"
