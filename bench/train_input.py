"""Training speed with the fixed tf.data input pipeline against tf.data's autotuner, side by side.

    python bench/train_input.py                       # lfw_faceswap_2k, 128 px crops, and cifake_2k, 32 px
    python bench/train_input.py --sets cifake_2k --rounds 3

Builds the training dataset of :func:`dfd.train._dataset` twice: as shipped (one decode worker per core,
a prefetch of two batches, autotuner off: :mod:`dfd.pipeline`) and as it was before (``AUTOTUNE``
parallelism and prefetch, autotuner on). Trains a fresh default patchnet on each for one warm-up epoch, then
times two epochs, alternating the two over ``--rounds`` rounds, and prints images per second per round and
the median ratio. Needs ``../shared/datasets`` (sets that are missing are skipped).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
CROP = {"lfw_faceswap_2k": 128, "cifake_2k": 32, "yonsei_rff_256": 128}


def images_per_s(root: Path, size: int, per_class: int, autotuned: bool) -> float:
    import tensorflow as tf

    import dfd.train as train
    from dfd import pipeline
    from dfd.model import build_model
    from dfd.preprocess import make_spec
    from dfd.storage import open_store

    entries = [train.Entry(0, f"{c}/{p.name}", int(c == "df"))
               for c in ("real", "df") for p in sorted((root / c).iterdir())[:per_class]]
    saved = pipeline.cpu_cores, pipeline.fixed, pipeline.PREFETCH_BATCHES
    if autotuned:  # the pipeline as it was: everything left to tf.data's autotuner
        pipeline.cpu_cores, pipeline.fixed, pipeline.PREFETCH_BATCHES = (
            lambda: tf.data.AUTOTUNE, lambda ds: ds, tf.data.AUTOTUNE)
    try:
        ds = train._dataset(entries, [open_store(root)], make_spec("crop", size), 32, True, 42, 40_000_000)
    finally:
        pipeline.cpu_cores, pipeline.fixed, pipeline.PREFETCH_BATCHES = saved
    model = build_model("patchnet", size)
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    t0 = time.perf_counter()
    model.fit(ds, epochs=2, verbose=0, shuffle=False)
    return 2 * len(entries) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", nargs="+", default=["lfw_faceswap_2k", "cifake_2k"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--per-class", type=int, default=700, help="training images per class")
    args = ap.parse_args(argv)
    print(f"{'set':<18} {'crop':>4} {'round':>5} {'autotuner img/s':>16} {'fixed img/s':>12} {'fixed/autotuner':>16}")
    for name in args.sets:
        root = SHARED / name
        if not root.is_dir():
            print(f"{name:<18} skipped: {root} not found")
            continue
        size = CROP.get(name, 64)
        ratios = []
        for r in range(args.rounds):
            auto = images_per_s(root, size, args.per_class, autotuned=True)
            fixed = images_per_s(root, size, args.per_class, autotuned=False)
            ratios.append(fixed / auto)
            print(f"{name:<18} {size:>4} {r + 1:>5} {auto:>16.1f} {fixed:>12.1f} {fixed / auto:>16.2f}", flush=True)
        print(f"{name:<18} median fixed/autotuner: {float(np.median(ratios)):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
