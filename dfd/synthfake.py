"""Synthetic fakes made from real training images only (optional part of the augment stage).

Two processes, chosen at random per image, leave the generic traces a manipulation leaves, without any
generator:

* **self-blending**: a region of the real image is replaced by a colour-, sharpness- and scale-perturbed copy
  of *itself* through a soft, randomly deformed elliptical mask, as a face swap blends a new face in (the
  blend boundary and the statistics mismatch are what a detector should learn, not a generator's style);
* **up-sampling artifacts**: :func:`dfd.demo.upsampling_fake` (down-sample by 2, up-sample through a
  nearest-neighbour or transposed-convolution-like kernel, blend back).

Only the *training* split's real images are used, so nothing leaks into validation or test. When the data has
no fakes at all (``df/`` empty: "reals only" training), fakes are also made from the validation and test reals,
each fake staying in its real's split, so that the model can be validated and tested. Which reals are
used and every random draw come from a hash of (seed, image content, settings), and the file name carries
the hash, so the output is deterministic and a rerun writes nothing. Files go under ``df/`` of the synthetic
store, next to the augment stage's copies, encoded like their source (:func:`dfd.imageio.encode_like`: a
JPEG real gives a JPEG fake with the same quantisation tables), so that the file format says nothing about
the label. Each fake comes with a *twin* under ``real/``: its real, decoded and re-encoded the same way, which
stands in for the real in training, so the pair differs only by the manipulation and not by one more round of
compression.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import gaussian_filter, map_coordinates

from dfd.data import Item
from dfd.demo import upsampling_fake
from dfd.imageio import decode_image, encode_like, suffix_like
from dfd.storage import Store

VERSION = "sf3"  # bump when the process changes, so old files are not reused


def _blend_mask(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A soft mask in [0, 1]: a random ellipse, deformed by a smooth random displacement, then blurred."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.2, 0.4) * h, rng.uniform(0.2, 0.4) * w
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).astype(np.float64)
    strength = rng.uniform(0.03, 0.08) * min(h, w)
    smooth = max(2.0, min(h, w) / 8)
    dy = gaussian_filter(rng.normal(size=(h, w)), smooth)
    dx = gaussian_filter(rng.normal(size=(h, w)), smooth)
    dy *= strength / (np.abs(dy).max() + 1e-9)
    dx *= strength / (np.abs(dx).max() + 1e-9)
    mask = map_coordinates(mask, [yy + dy, xx + dx], order=1, mode="nearest")
    mask = gaussian_filter(mask, rng.uniform(1.0, max(1.5, min(h, w) / 20)))
    mask = mask / (mask.max() + 1e-9)
    return np.clip(mask * rng.choice([1.0, rng.uniform(0.5, 1.0)]), 0, 1)


def _perturbed_source(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``pixels`` with shifted colour, changed sharpness and slightly changed scale."""
    h, w = pixels.shape[:2]
    img = Image.fromarray(pixels)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.5, 1.5)))
    else:
        img = img.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(50, 150)), threshold=2))
    scale = rng.uniform(0.9, 1.1)
    sw, sh = max(w, round(w * scale)), max(h, round(h * scale))
    if scale < 1:  # shrink and enlarge back: softer, resampled detail
        img = img.resize((max(2, round(w * scale)), max(2, round(h * scale))), Image.Resampling.BILINEAR)
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    elif (sw, sh) != (w, h):  # enlarge and keep the centre: the content is slightly larger
        img = img.resize((sw, sh), Image.Resampling.BILINEAR)
        y0, x0 = (sh - h) // 2, (sw - w) // 2
        img = img.crop((x0, y0, x0 + w, y0 + h))
    out = np.asarray(img).astype(np.float64)
    gain = rng.uniform(0.9, 1.1, size=3)
    offset = rng.uniform(-10, 10, size=3)
    return out * gain + offset


def self_blend(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blend a perturbed copy of ``pixels`` into itself through a soft deformed mask (same shape, uint8)."""
    h, w = pixels.shape[:2]
    source = _perturbed_source(pixels, rng)
    mask = _blend_mask(h, w, rng)[..., None]
    out = mask * source + (1 - mask) * pixels.astype(np.float64)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def synthetic_fake(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One synthetic fake of a real image: self-blending or up-sampling traces, half the time each."""
    if rng.random() < 0.5:
        return self_blend(pixels, rng)
    return upsampling_fake(pixels, rng)


def _digest(seed: int, sha256: str) -> bytes:
    return hashlib.sha256(f"{VERSION}:{seed}:{sha256}".encode()).digest()


def chosen_reals(items: list[Item], share: float, seed: int, split: str = "train") -> list[Item]:
    """The reals of ``split`` that yield a fake: ``round(share * n)`` of them, picked by hash (deterministic)."""
    reals = [it for it in items if it.split == split and it.y == 0]
    n = min(len(reals), round(share * len(reals)))
    return sorted(reals, key=lambda it: _digest(seed, it.sha256))[:n]


def fake_key(item: Item, seed: int, label: str = "df") -> str:
    """Where the synthetic fake of ``item`` goes (``label="real"``: its re-encoded twin)."""
    kind = "synth" if label == "df" else "twin"
    return f"{label}/{kind}-{item.sha256[:16]}-{_digest(seed, item.sha256).hex()[:8]}{suffix_like(item.key)}"


def synthesize_fakes(
    items: list[Item],
    source: Store,
    target: Store,
    share: float,
    seed: int,
    max_pixels: int,
    progress: Callable[[int, int], None] | None = None,
    splits: tuple[str, ...] = ("train",),
) -> tuple[list[Item], int]:
    """Write one synthetic fake, and its real twin, for ``share`` of the reals of ``splits`` (normally training
    only; every split when the data has no fakes at all). Returns (fake and twin items, files written).

    The twin is the real image decoded and encoded exactly as its fake is, with no manipulation: the pair then
    differs only by the manipulation, not by one more round of compression (a detector would otherwise learn
    "re-compressed means fake", which real fakes contradict). The twin stands in for its real (see
    :func:`without_twinned`). Both keep their real's split and group.
    """
    if share <= 0:
        return [], 0
    chosen = [it for split in splits for it in chosen_reals(items, share, seed, split)]
    out: list[Item] = []
    written = 0
    for n, item in enumerate(chosen, 1):
        keys = {label: fake_key(item, seed, label) for label in ("df", "real")}
        if not all(target.exists(k) for k in keys.values()):
            data = source.read_bytes(item.key)
            pixels = decode_image(data, max_pixels).pixels
            rng = np.random.default_rng(int.from_bytes(_digest(seed, item.sha256)[:8], "little"))
            target.write_bytes(keys["df"], encode_like(synthetic_fake(pixels, rng), data))
            target.write_bytes(keys["real"], encode_like(pixels, data))
            written += 2
        out += [Item(key=k, label=label, sha256="", phash=0, width=item.width, height=item.height, bytes=0,
                     group=item.group, split=item.split) for label, k in keys.items()]
        if progress and (n % 200 == 0 or n == len(chosen)):
            progress(n, len(chosen))
    return out, written


def without_twinned(items: list[Item], synthetic: list[Item]) -> list[Item]:
    """``items`` minus the reals that have a twin in ``synthetic``: the twin stands in for its real, so that every
    real with a synthetic fake is seen with the same compression history as that fake."""
    twinned = {it.key.split("/twin-", 1)[1][:16] for it in synthetic if "/twin-" in it.key}
    return [it for it in items if it.sha256[:16] not in twinned]
