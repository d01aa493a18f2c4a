"""What the default model costs per image on real-size inputs, and how well it uses the CPU.

    python bench/model_cost.py                          # the default architecture, untrained (same cost)
    python bench/model_cost.py --store URL [--model-version V]   # a published model instead
    python bench/model_cost.py --crops-auc [--seeds 42 43 44]   # also: train the default on lfw_faceswap_2k
                                                        # (about 15 min per seed on 2 cores) and score its
                                                        # test split with 1, 3 and 5 views

Prints, for the default architecture (patchnet) and the previous default (patchnet-v1) side by side, for each
input kind (lfw_faceswap_2k: 250 px images -> 5 crops of 128 by default, and the centre crop alone as
``DFD_EVAL_CROPS=1`` scores them; ffpp_c23_frames: 128 px frames -> 1 crop; generated JPEGs when the shared
sets are absent):

* multiply-accumulates (MACs) per view and per image, counted layer by layer from the Keras graph;
* images/s of the model alone (uint8 views already cut, one traced graph, batches of 64 views) and of
  ``Predictor.score_pixels`` (views cut from decoded pixels, as the scorer and the viewer do);
* files/s of :func:`dfd.scoring.score_folder` on a folder of those files (read, hash, decode, views, model,
  ledger and results files: what a batch run does), on a fresh results store each time;
* the achieved GMAC/s of the model alone, against the machine's peak measured in the same run: a
  4096 x 4096 float32 matmul through TensorFlow (all cores), the best of 3.

Each speed is the best of ``--rounds`` (3) rounds after one warm-up call, and the models take turns within a
round (interleaved), so that the ratios between them are not the load drift between two back-to-back
measurements.

With ``--crops-auc`` it also prints the test AUC of one trained default model when scoring averages the first
1, 3 or 5 of its views (centre, then corners), clean and after a x0.5 down-scale: whether the views earn
their cost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
SHARED = ROOT.parent / "shared" / "datasets"

import numpy as np  # noqa: E402


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one forward pass of one view, from the layers' output shapes (convolutions,
    depthwise and separable convolutions, the default's stem, dense layers; pooling, activations and
    concatenations are free)."""
    from keras import layers

    from dfd.model import HighpassStem

    total = 0
    for layer in model.layers:
        out = layer.output.shape
        if isinstance(layer, HighpassStem):  # one 5x5 convolution on the pixels, as it runs
            total += out[1] * out[2] * out[-1] * 5 * 5 * layer.input.shape[-1]
        elif isinstance(layer, layers.SeparableConv2D):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            total += out[1] * out[2] * cin * layer.depth_multiplier * kh * kw  # depthwise
            total += out[1] * out[2] * cin * layer.depth_multiplier * out[-1]  # pointwise
        elif isinstance(layer, layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += out[1] * out[2] * out[-1] * kh * kw
        elif isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            total += out[1] * out[2] * out[-1] * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * out[-1]
    return int(total)


def peak_gmacs(n: int = 4096, rounds: int = 3) -> float:
    """The machine's float32 matmul rate through TensorFlow, in GMAC/s (best of ``rounds``)."""
    import tensorflow as tf

    a = tf.random.uniform((n, n), dtype=tf.float32)
    b = tf.random.uniform((n, n), dtype=tf.float32)
    tf.linalg.matmul(a, b).numpy()  # warm up
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        tf.linalg.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return n**3 / best / 1e9


def inputs(kind: str, n: int, dest: Path) -> tuple[list[np.ndarray], Path, str]:
    """``n`` decoded images of one kind, a folder ``dest`` holding their files (for end-to-end scoring), and
    where they came from."""
    import shutil

    from dfd.imageio import decode_image

    dest.mkdir(parents=True, exist_ok=True)
    folder = {"lfw": SHARED / "lfw_faceswap_2k" / "real", "ffpp": SHARED / "ffpp_c23_frames" / "real"}[kind]
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))[:n]
        for i, p in enumerate(files):
            shutil.copyfile(p, dest / f"{i:05d}{p.suffix}")
        images = [decode_image(p.read_bytes()).pixels for p in files]
        h, w = images[0].shape[:2]
        return images, dest, f"{len(images)} files of {folder.parent.name} ({w}x{h})"
    from PIL import Image

    from dfd.demo import synthetic_photo

    rng = np.random.default_rng(0)
    side = 250 if kind == "lfw" else 128
    images = [synthetic_photo(rng, side) for _ in range(n)]
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(dest / f"{i:05d}.jpg", quality=90)
    return images, dest, f"{n} generated {side}x{side} JPEGs"


def interleaved(fns: dict[Any, Any], rounds: int) -> dict[Any, float]:
    """The best wall time of each of ``fns`` over ``rounds`` rounds, each round calling every one in turn (after
    one warm-up call each): on a shared machine the load drifts, and interleaving lets every model meet the same
    drift, so their ratio is fairer than that of back-to-back runs."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for key, fn in fns.items():
            started = time.perf_counter()
            fn()
            best[key] = min(best[key], time.perf_counter() - started)
    return best


def predictor_for(args: argparse.Namespace, arch: str, crops: int) -> tuple[Any, str]:
    from dfd.predict import Predictor

    if args.store:
        from dfd.scoring import load_predictor
        from dfd.storage import open_store

        pred, version = load_predictor(open_store(args.store), args.model_version, tempfile.mkdtemp())
        return Predictor(pred.model, {**pred.metadata, "input_spec": {**pred.spec, "crops": crops}}), version
    from dfd.model import build_model

    spec = {"mode": "crop", "size": 128, "crops": crops}
    return Predictor(build_model(arch, 128), {"input_spec": spec, "threshold": 0.5}), f"untrained {arch}"


# (architecture, input kind, views per image, what the row is), side by side in one run: the default
# (patchnet) against the previous default (patchnet-v1) on lfw-size images with five views, the default with one
# view (DFD_EVAL_CROPS=1), and both on ffpp frames (one crop either way). With --store only the stored model's
# rows are measured (its architecture is what it is).
ROWS = (("patchnet-v1", "lfw", 5, "previous default, 5 views"), ("patchnet", "lfw", 5, "default, 5 views"),
        ("patchnet", "lfw", 1, "DFD_EVAL_CROPS=1"), ("patchnet-v1", "ffpp", 1, "previous default, 1 crop"),
        ("patchnet", "ffpp", 1, "default, 1 crop"))


def cost_table(args: argparse.Namespace) -> None:
    from score_throughput import run_core

    peak = peak_gmacs()
    print(f"\nmachine peak (4096^2 float32 matmul, TensorFlow, all cores): {peak:.1f} GMAC/s\n")
    print("| input | model | views/image | MMAC/view | MMAC/image | model alone img/s | achieved GMAC/s "
          "| of peak | score_pixels img/s | score_folder files/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    speed: dict[tuple[str, str, int], tuple[float, float]] = {}  # -> (model alone img/s, files/s)
    rows = [r for r in ROWS if not args.store or r[0] == "patchnet"]
    with tempfile.TemporaryDirectory(prefix="dfd-model-cost-") as tmp:
        loaded = {kind: inputs(kind, args.images, Path(tmp) / kind) for kind in ("lfw", "ffpp")}
        preds = {row: predictor_for(args, row[0], row[2]) for row in rows}
        views = {row: np.concatenate([preds[row][0].views(p) for p in loaded[row[1]][0]]) for row in rows}  # uint8,
        # as the scorer passes them
        t_model = interleaved({row: lambda pred=preds[row][0], v=views[row]: [pred._forward(v[i : i + 64])
                                                                           for i in range(0, len(v), 64)]
                               for row in rows}, args.rounds)
        t_full = interleaved({row: lambda pred=preds[row][0], images=loaded[row[1]][0]:
                              pred.score_pixels(images, batch_size=64) for row in rows}, args.rounds)
        folder_rate = dict.fromkeys(rows, 0.0)  # best of the rounds, a fresh results store each
        for row in rows:  # warm-up, as for the other measurements
            run_core(loaded[row[1]][1], preds[row][0], preds[row][1], 64)
        for _ in range(args.rounds):
            for row in rows:
                pred, name = preds[row]
                folder_rate[row] = max(folder_rate[row], run_core(loaded[row[1]][1], pred, name, 64))
        for row in rows:
            arch, kind, crops, label = row
            (pred, name), (images, _folder, what) = preds[row], loaded[kind]
            macs = count_macs(pred.model)
            per_image = macs * pred.views_per_image
            ips = len(images) / t_model[row]
            gmacs = per_image * ips / 1e9
            speed[(arch, kind, crops)] = ips, folder_rate[row]
            print(f"| {what} | {name}, {label} | {pred.views_per_image} | {macs / 1e6:.1f} | "
                  f"{per_image / 1e6:.1f} | {ips:.1f} | {gmacs:.1f} | {gmacs / peak:.1%} | "
                  f"{len(images) / t_full[row]:.1f} | {folder_rate[row]:.1f} |")
    if args.store:
        return
    old, new, one = speed[("patchnet-v1", "lfw", 5)], speed[("patchnet", "lfw", 5)], speed[("patchnet", "lfw", 1)]
    print(f"\nlfw-size images, 5 views, default against previous default: model alone x{new[0] / old[0]:.2f}, "
          f"score_folder (read, hash, decode, views, model, ledger, results) x{new[1] / old[1]:.2f} "
          f"({new[1]:.1f} against {old[1]:.1f} files/s); the default with 1 view: x{one[1] / old[1]:.2f} "
          f"({one[1]:.1f} files/s)")


def crops_auc(seeds: list[int]) -> None:
    """Train the default on lfw_faceswap_2k (each seed) and score its test split with 1, 3 and 5 views."""
    import quality

    from dfd import evaluate, robust
    from dfd.imageio import decode_image
    from dfd.settings import Settings
    from dfd.storage import open_store

    base = Settings.from_env()
    ds = quality.prepare("lfw_faceswap_2k", SHARED / "lfw_faceswap_2k", base)
    test = ds.entries("test")
    store = open_store(ds.root)
    clean = [decode_image(store.read_bytes(e.key), base.max_image_pixels).pixels for e in test]
    half = [robust.downscale(p, 0.5) for p in clean]
    y = np.array([e.y for e in test])

    def view_logits(pred: Any, images: list[np.ndarray]) -> np.ndarray:
        out = []
        for p in images:
            probs = np.clip(pred._forward(pred.views(p).astype(np.float32)), 1e-6, 1 - 1e-6)
            out.append(np.log(probs / (1 - probs)))
        return np.array(out)  # (images, 5)

    aucs = []  # per seed: (clean, x0.5) for 1, 3, 5 views
    for seed in seeds:
        with tempfile.TemporaryDirectory() as synth:
            _row, pred = quality.run_one(ds, "default", base, Path(synth), seed=seed)
        lc, lh = view_logits(pred, clean), view_logits(pred, half)
        aucs.append([(evaluate.auc(y, lc[:, :k].mean(1)), evaluate.auc(y, lh[:, :k].mean(1))) for k in (1, 3, 5)])
        print(f"seed {seed}: " + ", ".join(f"{k} views {a[0]:.4f} (x0.5 {a[1]:.4f})"
                                           for k, a in zip((1, 3, 5), aucs[-1], strict=True)), flush=True)
    a = np.array(aucs)  # (seeds, 3, 2)
    sd = a.std(axis=0, ddof=1) if len(seeds) > 1 else np.zeros(a.shape[1:])
    print(f"\nlfw_faceswap_2k, default, seeds {' '.join(map(str, seeds))}, {len(test)} test images: AUC by views\n")
    print("| views (centre, then corners) | test AUC | AUC x0.5 |\n|---|---|---|")
    for i, k in enumerate((1, 3, 5)):
        m = a.mean(axis=0)
        print(f"| {k} | {m[i, 0]:.4f} ± {sd[i, 0]:.4f} | {m[i, 1]:.4f} ± {sd[i, 1]:.4f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--store", default="", help="artifact store URL of a published model (default: untrained)")
    ap.add_argument("--model-version", default=None, help="version in --store (default: its champion)")
    ap.add_argument("--images", type=int, default=200, help="images per input kind (default: 200)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement, best kept (default: 3)")
    ap.add_argument("--crops-auc", action="store_true", help="also train on lfw and compare 1, 3, 5 views")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42], help="training seeds for --crops-auc")
    ap.add_argument("--no-cost", action="store_true", help="skip the cost table")
    args = ap.parse_args()
    if not args.no_cost:
        cost_table(args)
    if args.crops_auc:
        crops_auc(args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
