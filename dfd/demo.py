"""A labelled demo data set made offline, so that the main job runs on a fresh machine with no set-up.

Real images are patches cut from photographs that ship inside installed packages (scikit-learn's
``china.jpg`` and ``flower.jpg``, matplotlib's ``grace_hopper.jpg``), at several scales, flipped and
brightness-jittered. Fakes are *other* patches of the same photos passed through a documented synthetic
artifact process that imitates a generator's up-sampling: the patch is down-sampled by 2 and up-sampled
again through either a nearest-neighbour kernel or a transposed-convolution-like zero-insertion followed
by a small smoothing kernel, and a random share of the patch is blended back with the original through a
soft mask. Both classes are then saved as JPEG at the same quality, so the format says nothing.

**This is not a deepfake benchmark.** It proves the pipeline works end to end; measure real detectors
on real data (see ``bench/quality.py``).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image

DEMO_NOTE = "demo data: synthetic up-sampling artifacts on patches of packaged photos, NOT a deepfake benchmark"


def source_photos() -> list[np.ndarray]:
    """The photographs shipped inside installed packages (no network)."""
    import matplotlib.cbook as cbook
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(img, dtype=np.uint8) for img in load_sample_images().images]
    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        photos.append(np.asarray(Image.open(fh).convert("RGB"), dtype=np.uint8))
    return photos


def synthetic_photo(rng: np.random.Generator, size: int = 96) -> np.ndarray:
    """A smooth, photo-like random image (blobs, a gradient and sensor-like noise) for tests."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    img = np.zeros((size, size, 3))
    for _ in range(6):
        cy, cx, r = rng.random(), rng.random(), 0.1 + 0.4 * rng.random()
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.random(3) * 160
    img += (xx[..., None] * rng.random(3) + yy[..., None] * rng.random(3)) * 60
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def upsampling_fake(patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Imitate a generator's up-sampling traces on ``patch`` (same shape, uint8)."""
    h, w = patch.shape[:2]
    small = np.asarray(Image.fromarray(patch).resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.BOX))
    small = small.astype(np.float64)
    if rng.random() < 0.5:
        up = small.repeat(2, axis=0).repeat(2, axis=1)  # nearest-neighbour kernel
    else:
        # transposed-convolution-like: insert zeros, then smooth with an uneven 3x3 kernel (checkerboard)
        up = np.zeros((small.shape[0] * 2, small.shape[1] * 2, 3))
        up[::2, ::2] = small * 4
        k = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]]) * (0.8 + 0.4 * rng.random())
        padded = np.pad(up, ((1, 1), (1, 1), (0, 0)), mode="edge")
        up = sum(k[i, j] * padded[i : i + up.shape[0], j : j + up.shape[1]] for i in range(3) for j in range(3))
    up = _fit(up, h, w)
    # blend part of the patch back through a soft mask, as a face-swap blends a region
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    radius = rng.uniform(0.5, 0.8) * max(h, w)
    mask = np.clip(1.5 - np.hypot(yy - cy, xx - cx) / radius, 0, 1)[..., None]
    out = mask * up + (1 - mask) * patch.astype(np.float64)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    img = img[:h, :w]
    if img.shape[0] < h or img.shape[1] < w:
        img = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), mode="edge")
    return img


def _random_patch(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random textured patch (flat sky or shadow is skipped: the fake process would change nothing)."""
    patch = np.zeros((size, size, 3))
    for _ in range(20):
        scale = rng.choice([1.0, 0.75, 0.5])
        h, w = photo.shape[:2]
        scaled = photo
        if scale != 1.0:
            new_size = (int(w * scale), int(h * scale))
            scaled = np.asarray(Image.fromarray(photo).resize(new_size, Image.Resampling.LANCZOS))
        h, w = scaled.shape[:2]
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        patch = scaled[y : y + size, x : x + size].astype(np.float64)
        if patch.std() >= 12:
            break
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = patch * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
    return np.clip(patch, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def generate_demo(root: str | Path, per_class: int = 300, size: int = 64, seed: int = 0,
                  photos: list[np.ndarray] | None = None) -> dict[str, int]:
    """Write ``per_class`` real and fake JPEGs under ``root/real`` and ``root/df``. Returns the counts."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    photos = photos if photos is not None else source_photos()
    counts = {"real": 0, "df": 0}
    for label in ("real", "df"):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            patch = _random_patch(photos[int(rng.integers(len(photos)))], size, rng)
            if label == "df":
                patch = upsampling_fake(patch, rng)
            (folder / f"demo_{label}_{i:04d}.jpg").write_bytes(encode_jpeg(patch))
            counts[label] += 1
    (root / "README.txt").write_text(DEMO_NOTE + "\nMade by dfd.demo.generate_demo; delete to regenerate.\n")
    return counts


def has_images(root: str | Path) -> bool:
    """True when ``root`` already holds any file in its real/ or df/ folder."""
    root = Path(root)
    return any(p.is_file() for label in ("real", "df") for p in (root / label).rglob("*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dfd-demo-data", description="Generate the offline demo data set.")
    parser.add_argument("root", nargs="?", default="data/sample_data")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="generate even if the folder has images")
    args = parser.parse_args(argv)
    if has_images(args.root) and not args.force:
        print(f"{args.root} already has images; leaving it alone (use --force to add the demo set)")
        return 0
    counts = generate_demo(args.root, args.per_class, args.size, args.seed)
    print(f"wrote {counts['real']} real and {counts['df']} fake images to {args.root}")
    print(f"NOTE: {DEMO_NOTE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
