"""A hostile corpus built entirely in code: broken, odd, huge-by-header and dangerous inputs, one per kind.

:data:`KINDS` lists every kind with the file it makes and what batch scoring, the data stage and the viewer
must do with it (scored, or refused with a reason group); :func:`build` writes them all into a folder.
Nothing is downloaded. Each kind has its own pixels, so no two files share content (the data stage would
set a copy aside as ``duplicate``).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

from dfd.demo import synthetic_photo
from dfd.storage import escape_name

BYTE_LIMIT = 1_000_000  # max_bytes given to the data stage and batch scoring in the hostile tests
IGNORED = "ignored"  # expectation: hidden, never listed by either stage


@dataclass(frozen=True)
class Ctx:
    """Where the corpus is built, and a folder outside it (for links that leave the folder)."""

    folder: Path
    outside: Path


@dataclass(frozen=True)
class Kind:
    """One hostile input: ``name`` is its path under the corpus folder (bytes when it is not UTF-8)."""

    id: str
    name: str | bytes
    build: Callable[[bytes, Ctx, int], None]
    expect: str | None  # the reason group (text before the first colon) both stages give; None = scored
    upload: bool = True  # its bytes can be sent to the viewer (False: links, FIFOs, folders, byte limit)
    data_expect: str | None | bool = False  # the data stage's reason when it differs by design (False: same)

    @property
    def key(self) -> str:
        """The store key batch scoring and the data stage list it under (relative to the corpus folder)."""
        raw = self.name if isinstance(self.name, bytes) else self.name.encode("utf-8")
        return escape_name(os.fsdecode(raw))


# --- encoders ---------------------------------------------------------------------------------------------


def photo(seed: int, size: int = 64) -> np.ndarray:
    return synthetic_photo(np.random.default_rng(1000 + seed), size)


def encode(pixels: np.ndarray | Image.Image, fmt: str, **kw: object) -> bytes:
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_raw(width: int, height: int, depth: int, color: int, body: bytes) -> bytes:
    """A PNG from its IHDR fields and the already-compressed IDAT body."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def png_bomb(side: int = 20_000) -> bytes:
    """A valid 1-bit PNG of side x side pixels (400 megapixels) in about 50 KB: a decompression bomb."""
    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png_raw(side, side, 1, 0, body)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG of a few bytes whose header claims width x height pixels, with one row of data."""
    return png_raw(width, height, 8, 2, zlib.compress(b"\x00" * 16))


def png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16), which Pillow cannot write itself."""
    deep = pixels.astype(">u2") * 257
    rows = b"".join(b"\x00" + deep[y].tobytes() for y in range(deep.shape[0]))
    return png_raw(pixels.shape[1], pixels.shape[0], 16, 2, zlib.compress(rows))


def exif_png(pixels: np.ndarray, orientation: int) -> bytes:
    """A PNG holding ``pixels`` stored so that applying EXIF ``orientation`` shows them upright."""
    stored = {  # the inverse of what the orientation asks a viewer to do
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.transpose(a, (1, 0, 2)),
        6: lambda a: np.rot90(a, 1),
        7: lambda a: np.transpose(a, (1, 0, 2))[::-1, ::-1],
        8: lambda a: np.rot90(a, -1),
    }[orientation](pixels)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(np.ascontiguousarray(stored), "PNG", exif=exif)


def upright(seed: int = 7) -> np.ndarray:
    """The one non-square image every EXIF-orientation kind shows once turned upright (40 tall, 30 wide)."""
    return photo(seed, 40)[:, :30]


# --- builders ---------------------------------------------------------------------------------------------


def put(data: bytes) -> Callable[[bytes, Ctx, int], None]:
    def build(path: bytes, ctx: Ctx, seed: int) -> None:
        with open(path, "wb") as fh:
            fh.write(data)

    return build


def made(fn: Callable[[int], bytes]) -> Callable[[bytes, Ctx, int], None]:
    """A builder whose bytes depend on the kind's seed (distinct content per kind)."""

    def build(path: bytes, ctx: Ctx, seed: int) -> None:
        with open(path, "wb") as fh:
            fh.write(fn(seed))

    return build


def jpeg_of(seed: int, size: int = 64, **kw: object) -> bytes:
    return encode(photo(seed, size), "JPEG", quality=90, **kw)


def truncated(fmt: str, **kw: object) -> Callable[[int], bytes]:
    def make(seed: int) -> bytes:
        full = encode(photo(seed, 96), fmt, **kw)
        return full[: len(full) // 2]

    return make


def cmyk(seed: int) -> bytes:
    return encode(Image.fromarray(photo(seed)).convert("CMYK"), "JPEG", quality=90)


def gray16(seed: int) -> bytes:
    return encode(Image.fromarray(photo(seed)[..., 0].astype(np.uint16) * 257), "PNG")


def palette_transparent(seed: int) -> bytes:
    img = Image.fromarray(photo(seed)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    return encode(img, "PNG", transparency=0)


def gif_frames(seed: int, frames: int = 500) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    imgs = []
    for i in range(frames):  # every frame differs, so the encoder keeps all 500
        frame = base.copy()
        frame[i % 16, (i // 16) % 16] ^= 0xFF
        imgs.append(Image.fromarray(frame).convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
    return encode(imgs[0], "GIF", save_all=True, append_images=imgs[1:], duration=20, loop=0)


def tiff_pages(seed: int) -> bytes:
    pages = [Image.fromarray(photo(seed * 10 + i, 48)) for i in range(3)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def icc(seed: int) -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return jpeg_of(seed, icc_profile=profile)


def garbage_exif(seed: int) -> bytes:
    """A JPEG whose APP1 Exif segment is noise after the header."""
    data = jpeg_of(seed)
    junk = b"Exif\x00\x00" + np.random.default_rng(seed).integers(0, 256, 200, dtype=np.uint8).tobytes()
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk + data[2:]


def noise_png(seed: int) -> bytes:
    """Incompressible pixels: a PNG just over :data:`BYTE_LIMIT` bytes."""
    return encode(np.random.default_rng(seed).integers(0, 256, (600, 600, 3), dtype=np.uint8), "PNG",
                  compress_level=1)


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
       b"newpath 0 0 moveto 64 64 lineto stroke showpage\n%%EOF\n")
HTML = b"<!DOCTYPE html><html><body><script>alert(1)</script><img src=x onerror=alert(2)></body></html>\n"
SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
       b'<script>alert(1)</script><rect width="64" height="64"/></svg>\n')
PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"


def symlink_outside(path: bytes, ctx: Ctx, seed: int) -> None:
    target = ctx.outside / f"secret-{seed}.jpg"
    target.write_bytes(jpeg_of(seed))
    os.symlink(target, path)


def symlink_loop(path: bytes, ctx: Ctx, seed: int) -> None:
    os.symlink(os.path.basename(path), path)  # a link to itself


def fifo(path: bytes, ctx: Ctx, seed: int) -> None:
    os.mkfifo(path)  # reading it would wait for a writer forever


def folder_named_jpg(path: bytes, ctx: Ctx, seed: int) -> None:
    """``folder.jpg/`` holds one image; an empty ``empty-folder.jpg/`` sits next to it (it makes no row)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(encode(photo(seed), "PNG"))
    os.makedirs(os.path.join(os.path.dirname(os.path.dirname(path)), b"empty-folder.jpg"), exist_ok=True)


def _kinds() -> list[Kind]:
    kinds = [
        Kind("plain-jpeg", "plain.jpg", made(jpeg_of), None),
        Kind("zero-bytes", "zero.jpg", put(b""), "zero bytes"),
        Kind("truncated-jpeg", "truncated.jpg", made(truncated("JPEG", quality=90)), "truncated"),
        Kind("truncated-png", "truncated.png", made(truncated("PNG")), "truncated"),
        Kind("truncated-webp", "truncated.webp", made(truncated("WEBP", quality=90)), "truncated"),
        Kind("random-bytes", "random.jpg",
             made(lambda s: np.random.default_rng(s).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
             "not an image"),
        Kind("html-as-jpg", "page.jpg", put(HTML), "not an image"),
        Kind("svg-as-png", "drawing.png", put(SVG), "not an image"),
        Kind("pdf-as-png", "document.png", put(PDF), "not an image"),
        Kind("eps-as-jpg", "postscript.jpg", put(EPS), "not an image"),
        Kind("png-decompression-bomb", "bomb.png", put(png_bomb()), "too large"),
        Kind("header-30000x30000", "header-30000.png", put(png_header_only(30_000, 30_000)), "too large"),
        Kind("cmyk-jpeg", "cmyk.jpg", made(cmyk), None),
        Kind("png-16bit-gray", "gray16.png", made(gray16), None),
        Kind("png-16bit-rgb", "rgb16.png", made(lambda s: png_16bit_rgb(photo(s))), None),
        Kind("palette-png-transparency", "palette.png", made(palette_transparent), None),
        Kind("gif-500-frames", "frames.gif", made(gif_frames), None),
        Kind("tiff-multipage", "pages.tiff", made(tiff_pages), None),
        *[Kind(f"exif-orientation-{o}", f"orient-{o}.png", put(exif_png(upright(), o)), None) for o in range(1, 9)],
        Kind("exif-garbage", "garbage-exif.jpg", made(garbage_exif), None),
        Kind("icc-profile", "icc.jpg", made(icc), None),
        Kind("one-pixel", "pixel.png", made(lambda s: encode(photo(s, 8)[:1, :1], "PNG")), None),
        Kind("strip-1x3000", "strip.png",
             made(lambda s: encode(np.repeat(photo(s, 64)[:1], 47, axis=1)[:, :3000], "PNG")), None),
        Kind("uppercase-extension", "UPPER.JPEG", made(jpeg_of), None),
        Kind("name-unicode", "ünïcödé 名前 😀.jpg", made(jpeg_of), None),
        Kind("name-spaces", " lead  and trail .jpg", made(jpeg_of), None),
        Kind("name-newline", "new\nline.jpg", made(jpeg_of), None),
        Kind("name-leading-dash", "-rf --help.jpg", made(jpeg_of), None),
        Kind("name-255-bytes", "n" * 251 + ".jpg", made(jpeg_of), None),
        Kind("name-not-utf8", b"bad\xff\xfe.jpg", made(jpeg_of), None),
        Kind("name-backslash", "back\\slash\\x41.jpg", made(jpeg_of), None),
        Kind("name-formula", '=HYPERLINK("http:evil","click").jpg', made(jpeg_of), None),
        Kind("symlink-outside", "link-outside.jpg", symlink_outside, "unreadable", upload=False),
        Kind("symlink-loop", "loop.jpg", symlink_loop, "unreadable", upload=False),
        Kind("fifo", "fifo.jpg", fifo, "unreadable", upload=False),
        Kind("folder-named-jpg", "folder.jpg/inside.png", folder_named_jpg, None, upload=False),
        Kind("over-byte-limit", "noise.png", made(noise_png), "file too large", upload=False),
        Kind("text-file", "notes.txt", put(b"just some notes\n"), "not an image"),
        # Batch scoring decides by content, the data stage by extension first (it skips READMEs and the like):
        Kind("image-without-extension", "no-extension", made(lambda s: encode(photo(s), "PNG")), None,
             data_expect="not an image"),
        Kind("hidden-file", ".hidden.jpg", made(jpeg_of), IGNORED, upload=False),
    ]
    assert len({k.id for k in kinds}) == len(kinds) and len({k.key for k in kinds}) == len(kinds)
    return kinds


KINDS: list[Kind] = _kinds()
KINDS_BY_ID: dict[str, Kind] = {k.id: k for k in KINDS}


def build(folder: Path, outside: Path) -> dict[str, Kind]:
    """Write every kind under ``folder`` (``outside`` receives link targets); returns them by key."""
    folder.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(folder, outside)
    for seed, kind in enumerate(KINDS, start=1):
        raw = kind.name if isinstance(kind.name, bytes) else kind.name.encode("utf-8")
        path = os.path.join(os.fsencode(folder), raw)
        if b"/" in raw:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        kind.build(path, ctx, seed)
    return {k.key: k for k in KINDS}


def read_kind(folder: Path, kind: Kind) -> bytes:
    """The bytes of a kind's file, as an upload would carry them."""
    raw = kind.name if isinstance(kind.name, bytes) else kind.name.encode("utf-8")
    with open(os.path.join(os.fsencode(folder), raw), "rb") as fh:
        return fh.read()
