"""Experiment (dropped, kept to rerun): does scoring each view together with its mirror image lift AUC?

Training flips views at random, so the mirror of a view is as valid a view as the view itself. Trains the
default configuration on one shared set for each seed (``bench/quality.py``'s ``run_one``, same split) and
prints the test AUC, clean and after a x0.5 down-scale, with and without the mirrored views.

    python bench/mirror_views.py cifake_2k 42 43 44 [--datasets ../shared/datasets]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import quality  # noqa: E402

from dfd import evaluate, robust  # noqa: E402
from dfd.imageio import decode_image  # noqa: E402
from dfd.settings import Settings  # noqa: E402
from dfd.storage import open_store  # noqa: E402


def logit_means(predictor, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the mean view logit, and the mean over the views and their mirrors."""
    plain, both = [], []
    for pixels in images:
        views = predictor.views(pixels)
        p = np.clip(predictor._forward(np.concatenate([views, views[:, :, ::-1]])), 1e-6, 1 - 1e-6)
        logits = np.log(p / (1 - p))
        plain.append(logits[: len(views)].mean())
        both.append(logits.mean())
    return np.array(plain), np.array(both)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("set")
    ap.add_argument("seeds", nargs="+", type=int)
    ap.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = ap.parse_args()
    base = Settings.from_env()
    ds = quality.prepare(args.set, args.datasets / args.set, base)
    test = ds.entries("test")
    store = open_store(ds.root)
    clean = [decode_image(store.read_bytes(e.key), base.max_image_pixels).pixels for e in test]
    half = [robust.downscale(p, 0.5) for p in clean]
    y = np.array([e.y for e in test])
    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as synth:
            _row, predictor = quality.run_one(ds, "default", base, Path(synth), seed=seed)
        c, cm = logit_means(predictor, clean)
        h, hm = logit_means(predictor, half)
        rows.append([evaluate.auc(y, v) for v in (c, cm, h, hm)])
    print(f"\n{args.set}, seeds {' '.join(map(str, args.seeds))}\n")
    print("| views | test AUC | AUC x0.5 |\n|---|---|---|")
    r = np.array(rows)
    sd = r.std(axis=0, ddof=1) if len(r) > 1 else np.zeros(4)
    for name, i in (("the model's views", 0), ("views + mirrors", 1)):
        print(f"| {name} | {r[:, i].mean():.4f} ± {sd[i]:.4f} | {r[:, i + 2].mean():.4f} ± {sd[i + 2]:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
