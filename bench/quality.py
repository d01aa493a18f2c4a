"""Detection quality on the real labelled sets in ../shared/datasets: every architecture, same split.

For each set: the data stage (decode, quarantine, duplicate-aware split with a fixed seed), the augment
stage, training with the retrain flow's settings, then evaluation of the trained model on the held-out test
split with the threshold chosen on validation. Prints a markdown table and writes it to ``--out``.

    python bench/quality.py                              # every set, patchnet and seed-cnn
    python bench/quality.py --sets lfw_faceswap_2k --archs patchnet --epochs 8
    python bench/quality.py --sets lfw_faceswap_2k --archs patchnet --epochs 4 --robust-aug 0.3 \
        --synthetic-fakes 0.5 --face-crop --out docs/QUALITY.md

Besides the clean test AUC it reports the AUC on the same test images after a JPEG re-compression at quality
50 and after a x0.5 down-scale (the degradations images meet when shared), with the same model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dfd import augment, data, evaluate, robust, synthfake  # noqa: E402
from dfd.imageio import decode_image  # noqa: E402
from dfd.model import input_spec_for  # noqa: E402
from dfd.predict import Predictor  # noqa: E402
from dfd.preprocess import choose_crop_size  # noqa: E402
from dfd.settings import Settings  # noqa: E402
from dfd.storage import open_store  # noqa: E402
from dfd.train import Entry, train  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def prepare(root: Path, settings: Settings) -> list[data.Item]:
    store = open_store(root)
    result = data.validate(store, max_pixels=settings.max_image_pixels, max_bytes=settings.max_file_bytes,
                           min_per_class=settings.min_images_per_class)
    data.assign_splits(result, near_distance=settings.near_duplicate_distance,
                       val_fraction=settings.val_fraction, test_fraction=settings.test_fraction, seed=settings.seed)
    return result.items


def run_one(root: Path, items: list[data.Item], arch: str, settings: Settings, synth_dir: Path) -> dict:
    store, synth = open_store(root), open_store(synth_dir)
    params = augment.AugmentParams(per_image=settings.augment_per_image, rotation=settings.augment_rotation,
                                   shift=settings.augment_shift, zoom=settings.augment_zoom,
                                   flip=settings.augment_flip, seed=settings.seed)
    synthetic, _ = augment.augment_training_split(items, store, synth, params, settings.max_image_pixels)
    fakes, _ = synthfake.synthesize_fakes(items, store, synth, settings.synthetic_fakes, settings.seed,
                                          settings.max_image_pixels)
    synthetic = synthetic + fakes
    train_entries = [Entry(0, it.key, it.y) for it in items if it.split == "train"]
    train_entries += [Entry(1, it.key, it.y) for it in synthetic]
    val = [Entry(0, it.key, it.y) for it in items if it.split == "val"]
    test = [Entry(0, it.key, it.y) for it in items if it.split == "test"]
    sides = [min(it.width, it.height) for it in items if it.split == "train"]
    crop = choose_crop_size(sides, settings.max_crop_size, settings.crop_size)
    big = float(np.median(sides)) >= 1.25 * crop
    spec = input_spec_for(arch, crop, settings.eval_crops if big else 1, face_crop=settings.face_crop)
    with tempfile.TemporaryDirectory() as work:
        started = time.monotonic()
        model, history, stats = train(
            train_entries, val, [store, synth], arch=arch, spec=spec, epochs=settings.epochs,
            batch_size=settings.batch_size, learning_rate=settings.learning_rate, width=settings.width,
            patience=settings.patience, seed=settings.seed, max_pixels=settings.max_image_pixels,
            work_dir=work, log=lambda m: print(f"    {m}", flush=True), robust_aug=settings.robust_aug,
            weights_path=settings.weights_path)
        train_s = time.monotonic() - started
    predictor = Predictor(model, {"input_spec": spec, "threshold": 0.5, "temperature": 1.0})
    y_val, y_test = np.array([e.y for e in val]), np.array([e.y for e in test])
    raw_val = evaluate.score_entries(predictor, val, [store])
    raw_test = evaluate.score_entries(predictor, test, [store])
    t = evaluate.fit_temperature(y_val, raw_val)
    s_val, s_test = evaluate.apply_temperature(raw_val, t), evaluate.apply_temperature(raw_test, t)
    threshold = evaluate.choose_threshold(y_val, s_val)
    m = evaluate.metrics(y_test, s_test, threshold)
    test_pixels = [decode_image(store.read_bytes(e.key), settings.max_image_pixels).pixels for e in test]
    auc_jpeg = evaluate.auc(y_test, predictor.score_pixels([robust.jpeg(p, 50) for p in test_pixels]))
    auc_half = evaluate.auc(y_test, predictor.score_pixels([robust.downscale(p, 0.5) for p in test_pixels]))
    return {
        "auc_jpeg50": auc_jpeg, "auc_half": auc_half,
        "auc": m["roc_auc"], "ap": m["average_precision"], "acc": m["at_threshold"]["accuracy"],
        "ece": m["ece"], "epochs": stats["epochs_run"], "img_s": stats["train_images_per_s"],
        "train_s": train_s, "n_test": m["n"], "spec": spec,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--sets", nargs="*", help="set names (default: every folder in --datasets)")
    parser.add_argument("--archs", nargs="*", default=["patchnet", "seed-cnn"])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--augment-per-image", type=int)
    parser.add_argument("--robust-aug", type=float, help="probability of each training degradation")
    parser.add_argument("--synthetic-fakes", type=float, help="share of training reals that yield a fake")
    parser.add_argument("--face-crop", action="store_true", default=None, help="views from the largest face")
    parser.add_argument("--out", type=Path, default=Path("bench/out/quality.md"))
    args = parser.parse_args(argv)
    if not args.datasets.is_dir():
        print(f"no data sets at {args.datasets}: nothing to measure")
        return 0
    settings = Settings.from_env(epochs=args.epochs, augment_per_image=args.augment_per_image,
                                 robust_aug=args.robust_aug, synthetic_fakes=args.synthetic_fakes,
                                 face_crop=args.face_crop)
    sets = args.sets or sorted(p.name for p in args.datasets.iterdir() if (p / "real").is_dir())
    rows = []
    for name in sets:
        root = args.datasets / name
        items = prepare(root, settings)
        counts = {s: sum(it.split == s for it in items) for s in data.SPLITS}
        print(f"{name}: {len(items)} usable images, split {counts}", flush=True)
        with tempfile.TemporaryDirectory() as synth_dir:
            for arch in args.archs:
                print(f"  training {arch} ...", flush=True)
                r = run_one(root, items, arch, settings, Path(synth_dir))
                rows.append((name, arch, r))
                print(f"  {name} {arch}: AUC {r['auc']:.4f} AP {r['ap']:.4f} acc {r['acc']:.4f} "
                      f"({r['train_s']:.0f}s)", flush=True)
    header = ("| set | arch | input | test AUC | AUC JPEG q50 | AUC x0.5 | AP | accuracy @thr | ECE | epochs "
              "| train img/s | train wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for name, arch, r in rows:
        spec = r["spec"]
        inp = f"{spec['mode']} {spec['size']}" + (f" x{spec['crops']}" if spec["crops"] > 1 else "")
        inp += " face" if spec.get("face_crop") else ""
        lines.append(f"| {name} | {arch} | {inp} | {r['auc']:.4f} | {r['auc_jpeg50']:.4f} | {r['auc_half']:.4f} | "
                     f"{r['ap']:.4f} | {r['acc']:.4f} | "
                     f"{r['ece']:.4f} | {r['epochs']} | {r['img_s']:.0f} | {r['train_s']:.0f} |")
    table = "\n".join(lines)
    cmd = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    note = (f"\nSettings: epochs={settings.epochs}, batch={settings.batch_size}, lr={settings.learning_rate}, "
            f"augment_per_image={settings.augment_per_image}, robust_aug={settings.robust_aug}, "
            f"synthetic_fakes={settings.synthetic_fakes}, face_crop={settings.face_crop}, "
            f"seed={settings.seed}, {os.cpu_count()} CPU cores."
            f"\nCommand: `{cmd.strip()}`\n")
    print("\n" + table + note)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n" + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
