"""Detection quality on the real labelled sets in ../shared/datasets: configurations side by side, same split.

For each set: the data stage (decode, quarantine, duplicate-aware split with a fixed seed), the augment
stage, training with the retrain flow's settings, then evaluation of the trained model on the held-out test
split with the threshold and temperature chosen on validation. Each configuration is the flow's defaults
with one change (see ``CONFIGS``). Besides the clean test AUC it reports, with the same model:

* robustness: AUC on the same test images after a JPEG re-compression at quality 50 and after a x0.5
  down-scale (the degradations images meet when shared);
* cross-set: AUC on the test split of every other set (train on one, test on the others).

    python bench/quality.py --suite full                 # every set x every configuration -> docs/QUALITY.md
    python bench/quality.py                              # every set, default and seed-cnn
    python bench/quality.py --sets lfw_faceswap_2k --configs default face-crop --epochs 8
    python bench/quality.py --suite seeds                # the default over 3 training seeds on every set

With ``--seeds`` each configuration is trained once per seed on the same split (the split depends on the
data's seed only) and a row gives the mean and standard deviation over the seeds; ``--merge`` adds seeds to
a row measured before, so a slow suite can be spread over several sessions. Each run also applies the
promotion's quality floor (see :mod:`dfd.promotion`), so the table shows whether a model at chance would have
been promoted.

With ``--out`` ending in ``.md`` and holding the markers ``<!-- quality:begin -->`` and
``<!-- quality:end -->``, only the text between them is replaced, so hand-written notes around the tables
survive a regeneration.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from dfd import augment, data, evaluate, promotion, robust, synthfake  # noqa: E402
from dfd.imageio import decode_image  # noqa: E402
from dfd.model import input_spec_for_data  # noqa: E402
from dfd.predict import Predictor  # noqa: E402
from dfd.settings import Settings  # noqa: E402
from dfd.storage import open_store  # noqa: E402
from dfd.train import Entry, split_entries, train  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
BEGIN, END = "<!-- quality:begin -->", "<!-- quality:end -->"

# name -> (what it is, changes to the flow's defaults). "reals-only" trains on the training reals plus one
# synthetic fake per real, never seeing a real fake; validation is the validation reals plus their synthetic
# fakes; the test split (real fakes) is untouched.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("the retrain flow's defaults", {}),
    "one-view": ("default, scoring the centre crop only (DFD_EVAL_CROPS=1): a fifth of the model's work on "
                 "images larger than a crop", {"eval_crops": 1}),
    "patchnet-v1": ("the previous default architecture (until 2026-12-02): an extra full-resolution "
                    "convolution, separables at 1/2 to 1/8 resolution, about 4x the MACs per view",
                    {"arch": "patchnet-v1"}),
    "seed-cnn": ("the seed's baseline architecture", {"arch": "seed-cnn"}),
    "efficientnet-b0": ("EfficientNet-B0 from random weights on the same crops (no download)",
                        {"arch": "efficientnet-b0"}),
    "robust-aug": ("default + robustness augmentation (p 0.3 each)", {"robust_aug": 0.3}),
    "no-scale-aug": ("default without scale augmentation (the default before it)", {"scale_aug": 0.0}),
    "scale-aug-0.8": ("scale augmentation p 0.8, x0.5-x1", {"scale_aug": 0.8, "scale_aug_min": 0.5}),
    "scale-aug-0.5-wide": ("scale augmentation p 0.5, x0.35-x1", {"scale_aug": 0.5, "scale_aug_min": 0.35}),
    "scale-aug-0.8-wide": ("scale augmentation p 0.8, x0.35-x1", {"scale_aug": 0.8, "scale_aug_min": 0.35}),
    "synthetic-fakes": ("default + synthetic fakes from half the training reals", {"synthetic_fakes": 0.5}),
    "face-crop": ("default with face-aware views toggled", {"face_crop": "toggle"}),
    "reals-only": ("training reals + synthetic fakes only (no real fake seen)", {"synthetic_fakes": 1.0,
                                                                                "reals_only": True}),
}
SUITES = {"basic": ["default", "seed-cnn"], "full": list(CONFIGS), "seeds": ["default"]}
SEED_SUITE = [42, 43, 44]
# Metrics averaged over seeds (the others are taken from the first seed).
MEAN_KEYS = ("auc", "auc_jpeg50", "auc_half", "ap", "acc", "ece", "epochs", "img_s", "train_s")


@dataclasses.dataclass
class DataSet:
    name: str
    root: Path
    items: list[data.Item]

    def entries(self, split: str) -> list[Entry]:
        return [Entry(0, it.key, it.y, it.group) for it in self.items if it.split == split]


def prepare(name: str, root: Path, settings: Settings) -> DataSet:
    store = open_store(root)
    result = data.validate(store, max_pixels=settings.max_image_pixels, max_bytes=settings.max_file_bytes,
                           min_per_class=settings.min_images_per_class)
    data.assign_splits(result, near_distance=settings.near_duplicate_distance,
                       val_fraction=settings.val_fraction, test_fraction=settings.test_fraction, seed=settings.seed,
                       group_by=settings.group_by)
    return DataSet(name, root, result.items)


def config_settings(base: Settings, config: str) -> tuple[Settings, bool]:
    """The settings of one configuration, and whether it trains on reals (plus synthetic fakes) only."""
    changes = dict(CONFIGS[config][1])
    reals_only = bool(changes.pop("reals_only", False))
    if changes.get("face_crop") == "toggle":
        changes["face_crop"] = not base.face_crop
    return dataclasses.replace(base, **changes), reals_only


def _reals_with_fakes(ds: DataSet, split: str, synth: Any, s: Settings) -> list[Entry]:
    """The reals of ``split`` (as their re-encoded twins) plus one synthetic fake of each, written to the
    synthetic store; the set's real fakes are left out."""
    reals = [it for it in ds.items if it.y == 0]
    made, _ = synthfake.synthesize_fakes(reals, open_store(ds.root), synth, 1.0, s.seed, s.max_image_pixels,
                                         splits=(split,))
    return split_entries(reals, made, split)


def run_one(ds: DataSet, config: str, base: Settings, synth_dir: Path,
            seed: int | None = None) -> tuple[dict[str, Any], Predictor]:
    s, reals_only = config_settings(base, config)
    if seed is not None:
        s = dataclasses.replace(s, seed=seed)
    store, synth = open_store(ds.root), open_store(synth_dir)
    if reals_only:
        train_entries = _reals_with_fakes(ds, "train", synth, s)
        val = _reals_with_fakes(ds, "val", synth, s)
    else:
        params = augment.AugmentParams(per_image=s.augment_per_image, rotation=s.augment_rotation,
                                       shift=s.augment_shift, zoom=s.augment_zoom, flip=s.augment_flip,
                                       seed=s.seed)
        synthetic, _ = augment.augment_training_split(ds.items, store, synth, params, s.max_image_pixels)
        fakes, _ = synthfake.synthesize_fakes(ds.items, store, synth, s.synthetic_fakes, s.seed,
                                              s.max_image_pixels)
        train_entries = split_entries(ds.items, synthetic + fakes, "train")
        val = ds.entries("val")
    test = ds.entries("test")
    sides = [min(it.width, it.height) for it in ds.items if it.split == "train"]
    spec = input_spec_for_data(s.arch, sides, max_crop=s.max_crop_size, crop_size=s.crop_size,
                               eval_crops=s.eval_crops, face_crop=s.face_crop)
    with tempfile.TemporaryDirectory() as work:
        started = time.monotonic()
        model, _history, stats = train(
            train_entries, val, [store, synth], arch=s.arch, spec=spec, epochs=s.epochs,
            batch_size=s.batch_size, learning_rate=s.learning_rate, width=s.width,
            patience=s.patience, seed=s.seed, max_pixels=s.max_image_pixels,
            work_dir=work, log=lambda m: print(f"    {m}", flush=True), robust_aug=s.robust_aug,
            scale_aug=s.scale_aug, scale_aug_min=s.scale_aug_min, weights_path=s.weights_path,
            stall_epochs=s.stall_epochs, max_attempts=s.max_train_attempts, plateau_patience=s.lr_plateau_patience)
        train_s = time.monotonic() - started
    predictor = Predictor(model, {"input_spec": spec, "threshold": 0.5, "temperature": 1.0})
    y_val, y_test = np.array([e.y for e in val]), np.array([e.y for e in test])
    raw_val = evaluate.score_entries(predictor, val, [store, synth])
    raw_test = evaluate.score_entries(predictor, test, [store])
    t = evaluate.fit_temperature(y_val, raw_val)
    s_val, s_test = evaluate.apply_temperature(raw_val, t), evaluate.apply_temperature(raw_test, t)
    threshold = evaluate.choose_threshold(y_val, s_val)
    m = evaluate.metrics(y_test, s_test, threshold)
    intervals = {"validation": evaluate.split_auc_interval(val, s_val, s.seed),
                 "test": evaluate.split_auc_interval(test, s_test, s.seed)}
    floor = promotion.quality_floor(intervals, s.min_auc)
    test_pixels = [decode_image(store.read_bytes(e.key), s.max_image_pixels).pixels for e in test]
    auc_jpeg = evaluate.auc(y_test, predictor.score_pixels([robust.jpeg(p, 50) for p in test_pixels]))
    auc_half = evaluate.auc(y_test, predictor.score_pixels([robust.downscale(p, 0.5) for p in test_pixels]))
    row = {
        "auc_jpeg50": auc_jpeg, "auc_half": auc_half,
        "auc": m["roc_auc"], "ap": m["average_precision"], "acc": m["at_threshold"]["accuracy"],
        "ece": m["ece"], "epochs": stats["epochs_run"], "img_s": stats["train_images_per_s"],
        "train_s": train_s, "n_test": m["n"], "spec": spec, "cross": {},
        "seed": s.seed, "floor_passed": floor["passed"], "test_auc_low": intervals["test"]["low"],
        "tries": len(stats["attempts"]), "no_signal": stats["no_signal"],
    }
    return row, predictor


def aggregate(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row from per-seed rows: the mean of each metric, its standard deviation in ``sd``, the cross-set
    means, and the per-seed rows themselves in ``runs``."""
    ordered = [runs[k] for k in sorted(runs, key=int)]
    row = dict(ordered[0])
    for key in MEAN_KEYS:
        values = np.array([r[key] for r in ordered], dtype=float)
        row[key] = float(values.mean())
    row["sd"] = {key: float(np.std([r[key] for r in ordered], ddof=1)) if len(ordered) > 1 else 0.0
                 for key in ("auc", "auc_half", "auc_jpeg50")}
    row["cross"] = {o: float(np.mean([r["cross"][o] for r in ordered if o in r["cross"]]))
                    for o in ordered[0].get("cross", {})}
    row["seeds"] = [int(k) for k in sorted(runs, key=int)]
    row["floor_passes"] = sum(bool(r.get("floor_passed")) for r in ordered)
    row["at_chance_promoted"] = sum(bool(r.get("floor_passed")) and r.get("test_auc_low", 1.0) <= 0.5
                                    for r in ordered)
    row["runs"] = {str(k): r for k, r in runs.items()}
    return row


def cross_auc(predictor: Predictor, ds: DataSet) -> float:
    test = ds.entries("test")
    scores = evaluate.score_entries(predictor, test, [open_store(ds.root)])
    return evaluate.auc(np.array([e.y for e in test]), scores)


def describe_input(spec: dict[str, Any]) -> str:
    text = f"{spec['mode']} {spec['size']}" + (f" x{spec['crops']}" if spec["crops"] > 1 else "")
    return text + (" face" if spec.get("face_crop") else "")


def render(rows: list[tuple[str, str, dict[str, Any]]], sets: list[str], settings: Settings, cmd: str,
           wall_s: float, planned: int) -> str:
    """The markdown report: main table, cross-set table, target checks, settings and command(s)."""
    out = [] if len(rows) == planned else [f"**Partial: {len(rows)} of {planned} runs so far.**", ""]
    out += ["| set | config | input | seeds | test AUC | AUC JPEG q50 (drop) | AUC x0.5 (drop) | AP | accuracy @thr "
           "| ECE | epochs | train img/s | train wall s | floor passed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, config, r in rows:
        seeds = r.get("seeds", [r.get("seed", settings.seed)])
        out.append(
            f"| {name} | {config} | {describe_input(r['spec'])} | {len(seeds)} | {_pm(r, 'auc')} | "
            f"{_pm(r, 'auc_jpeg50')} ({r['auc'] - r['auc_jpeg50']:+.3f}) | {_pm(r, 'auc_half')} "
            f"({r['auc'] - r['auc_half']:+.3f}) | {r['ap']:.4f} | {r['acc']:.4f} | {r['ece']:.4f} | "
            f"{r['epochs']:.0f} | {r['img_s']:.0f} | {r['train_s']:.0f} | {_floor_cell(r, len(seeds))} |")
    if len(sets) > 1:
        out += ["", "Cross-set: test AUC of each trained model on every set's test split (in-domain in bold).", "",
                "| trained on | config | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
        for name, config, r in rows:
            cells = [f"**{r['auc']:.4f}**" if other == name else _cross_cell(r["cross"].get(other))
                     for other in sets]
            out.append(f"| {name} | {config} | " + " | ".join(cells) + " |")
        out += ["", "A cross-set AUC marked *below chance* is not noise: the model ranks that set's fakes as more "
                "real than its reals, so what it learned flips sign there (see \"Cross-set honesty\" below)."]
    out += ["", "Configurations (each is the flow's defaults with one change):", ""]
    used = list(dict.fromkeys(c for _, c, _ in rows))
    out += [f"- `{c}`: {CONFIGS[c][0]}" for c in used]
    out += ["", targets(rows), "",
            f"Defaults at the time: arch={settings.arch}, epochs={settings.epochs} (early stopping on validation "
            f"AUC, patience {settings.patience}), batch={settings.batch_size}, lr={settings.learning_rate}, "
            f"width={settings.width}, augment_per_image={settings.augment_per_image}, "
            f"robust_aug={settings.robust_aug}, scale_aug={settings.scale_aug} (x{settings.scale_aug_min}-x1), "
            f"synthetic_fakes={settings.synthetic_fakes}, group_by={settings.group_by}, "
            f"min_auc={settings.min_auc}, "
            f"face_crop={settings.face_crop}, split seed={settings.seed}. Split: duplicate- and group-aware, "
            f"{1 - settings.val_fraction - settings.test_fraction:.0%}/{settings.val_fraction:.0%}/"
            f"{settings.test_fraction:.0%}. Machine: {os.cpu_count()} CPU cores, no GPU. "
            f"This run: {wall_s / 60:.0f} min."]
    commands = list(dict.fromkeys(r.get("command", cmd) for _, _, r in rows))
    if len(commands) <= 1:
        out += ["", f"Command: `{commands[0] if commands else cmd}`"]
    else:
        out += ["", "Commands (the rows come from more than one run; `--merge` keeps the rows it does not re-measure):",
                ""]
        for c in commands:
            which = ", ".join(f"{n}/{k}" for n, k, r in rows if r.get("command", cmd) == c)
            out.append(f"- `{c}`: {which}")
    return "\n".join(out) + "\n"


def _pm(r: dict[str, Any], key: str) -> str:
    """``mean ± sd`` over seeds (just the value for one seed)."""
    sd = r.get("sd", {}).get(key)
    return f"{r[key]:.4f} ± {sd:.4f}" if sd and len(r.get("seeds", [])) > 1 else f"{r[key]:.4f}"


def _floor_cell(r: dict[str, Any], n: int) -> str:
    """How many seeds' models cleared the quality floor (would be promoted), and how many of those were at
    chance on the test split anyway (should be none)."""
    if "floor_passes" in r:
        passes, bad = r["floor_passes"], r["at_chance_promoted"]
    elif "floor_passed" in r:
        passes, bad = int(bool(r["floor_passed"])), int(bool(r["floor_passed"]) and r.get("test_auc_low", 1) <= 0.5)
    else:
        return "-"
    return f"{passes}/{n}" + (f" (**{bad} at chance**)" if bad else "")


def _cross_cell(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4f} *below chance*" if value < 0.45 else f"{value:.4f}"


def targets(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    """The quality targets, checked against the rows that were measured (means over seeds where there are
    several)."""
    want = {"cifake_2k": 0.97, "lfw_faceswap_2k": 0.98, "yonsei_rff_256": 0.70}
    by = {(n, c): r for n, c, r in rows}
    lines = ["Targets (on the `default` rows unless named):", ""]

    def mark(ok: bool) -> str:
        return "met" if ok else "**not met**"

    for name in dict.fromkeys(n for n, _, _ in rows):
        d, seed = by.get((name, "default")), by.get((name, "seed-cnn"))
        if d is None:
            continue
        parts = []
        if name in want:
            parts.append(f"AUC {d['auc']:.3f} vs {want[name]:.2f}: {mark(d['auc'] >= want[name])}")
        drop = max(d["auc"] - d["auc_jpeg50"], d["auc"] - d["auc_half"])
        if d["auc"] < 0.6:  # a model at chance has nothing to lose and a trivially small ECE
            parts.append("robustness and ECE not meaningful at chance")
        else:
            parts.append(f"worst robustness drop {drop:+.3f} vs 0.05: {mark(drop <= 0.05)}")
            half = d["auc"] - d["auc_half"]
            parts.append(f"x0.5 drop {half:+.3f} vs 0.10: {mark(half <= 0.10)}")
            parts.append(f"ECE {d['ece']:.3f} vs 0.05: {mark(d['ece'] <= 0.05)}")
        n = len(d.get("seeds", [d.get("seed")]))
        if "floor_passes" in d or "floor_passed" in d:
            passes = d.get("floor_passes", int(bool(d.get("floor_passed"))))
            bad = d.get("at_chance_promoted", 0)
            parts.append(f"quality floor passed by {passes} of {n} seeds, {bad} of them at chance on test: "
                         f"{mark(bad == 0)}")
        if seed is not None:
            gain = d["auc"] - seed["auc"]
            parts.append(f"beats seed-cnn by {gain:+.3f} vs 0.10: {mark(gain >= 0.10)}")
        ro = by.get((name, "reals-only"))
        if ro is not None:
            parts.append(f"reals-only AUC on real fakes {ro['auc']:.3f} vs 0.70: {mark(ro['auc'] >= 0.70)}")
        lines.append(f"- {name}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def rows_path(out: Path) -> Path:
    return out.with_suffix(".json")


def load_rows(out: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """The rows a previous run saved next to ``out`` (for ``--merge``)."""

    path = rows_path(out)
    if not path.exists():
        return []
    return [(r["set"], r["config"], r["row"]) for r in json.loads(path.read_text())]


def merge_rows(old: list[tuple[str, str, dict[str, Any]]], new: list[tuple[str, str, dict[str, Any]]],
               sets: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """``old`` with the rows of ``new`` replacing those of the same (set, configuration), in set then
    configuration order. Rows measured per seed (with ``runs``) are combined: a new run adds its seeds to the
    old row's, replacing only the seeds it re-measured."""
    by = {(n, c): r for n, c, r in old}
    for n, c, r in new:
        before = by.get((n, c))
        if "runs" in r and before is not None and "runs" in before:
            r = aggregate({**before["runs"], **r["runs"]})
        by[(n, c)] = r
    order = list(dict.fromkeys([*sets, *(n for n, _, _ in old)]))
    return sorted(((n, c, r) for (n, c), r in by.items()),
                  key=lambda t: (order.index(t[0]), list(CONFIGS).index(t[1])))


def save_rows(out: Path, rows: list[tuple[str, str, dict[str, Any]]]) -> None:

    path = rows_path(out)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps([{"set": n, "config": c, "row": r} for n, c, r in rows], indent=1) + "\n")
    os.replace(tmp, path)


def write_report(path: Path, report: str) -> None:
    """Write ``report`` to ``path``; between the markers when the file has them (the rest is kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = head + BEGIN + "\n" + report + END + rest.split(END, 1)[1]
    else:
        text = report
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=DATASETS)
    parser.add_argument("--sets", nargs="*", help="set names (default: every folder in --datasets)")
    parser.add_argument("--suite", choices=sorted(SUITES), help="a named list of configurations")
    parser.add_argument("--configs", nargs="*", choices=list(CONFIGS), help="configurations to run")
    parser.add_argument("--seeds", nargs="*", type=int, help="training seeds, one run each (default: the "
                        f"settings' seed; {' '.join(map(str, SEED_SUITE))} with --suite seeds)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--augment-per-image", type=int)
    parser.add_argument("--robust-aug", type=float, help="probability of each training degradation")
    parser.add_argument("--synthetic-fakes", type=float, help="share of training reals that yield a fake")
    parser.add_argument("--face-crop", action="store_true", default=None, help="views from the largest face")
    parser.add_argument("--train-on", nargs="*", help="train only on these sets (the others are still loaded "
                        "for the cross-set scores)")
    parser.add_argument("--no-cross", action="store_true", help="skip the cross-set scores")
    parser.add_argument("--render-only", action="store_true", help="rewrite the report from the saved rows, "
                        "measuring nothing")
    parser.add_argument("--merge", action="store_true", help="keep the rows of a previous run (saved next to "
                        "--out as .json) that this run does not re-measure")
    parser.add_argument("--out", type=Path, help="default: docs/QUALITY.md for --suite full, else "
                                                 "bench/out/quality.md")
    args = parser.parse_args(argv)
    if not args.datasets.is_dir():
        print(f"no data sets at {args.datasets}: nothing to measure")
        return 0
    configs = args.configs or SUITES[args.suite or "basic"]
    seeds = args.seeds or (SEED_SUITE if args.suite == "seeds" else None)
    out = args.out or Path("docs/QUALITY.md" if args.suite == "full" else "bench/out/quality.md")
    settings = Settings.from_env(epochs=args.epochs, augment_per_image=args.augment_per_image,
                                 robust_aug=args.robust_aug, synthetic_fakes=args.synthetic_fakes,
                                 face_crop=args.face_crop)
    if args.render_only:
        rows = load_rows(out)
        names = list(dict.fromkeys(n for n, _, _ in rows))
        write_report(out, render(rows, names, settings, "", 0.0, len(rows)).replace(" This run: 0 min.", "").rstrip()
                     + "\n")
        print(f"rewrote {out} from {rows_path(out)}")
        return 0
    names = args.sets or sorted(p.name for p in args.datasets.iterdir() if (p / "real").is_dir())
    started = time.monotonic()
    sets = {}
    for name in names:
        sets[name] = ds = prepare(name, args.datasets / name, settings)
        counts = {s: sum(it.split == s for it in ds.items) for s in data.SPLITS}
        print(f"{name}: {len(ds.items)} usable images, split {counts}", flush=True)
    rows: list[tuple[str, str, dict[str, Any]]] = []
    old = load_rows(out) if args.merge else []
    train_on = [n for n in sets if not args.train_on or n in args.train_on]
    planned = len(merge_rows(old, [(n, c, {}) for n in train_on for c in configs], list(sets)))
    report = ""
    cmd = ("python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    for name in train_on:
        ds = sets[name]
        with tempfile.TemporaryDirectory() as synth_dir:
            for config, seed in itertools.product(configs, seeds or [None]):
                what = config + (f" seed {seed}" if seed is not None else "")
                print(f"[{(time.monotonic() - started) / 60:.0f} min] {name}: training {what} ...", flush=True)
                r, predictor = run_one(ds, config, settings, Path(synth_dir), seed)
                r["command"] = cmd
                if not args.no_cross:
                    r["cross"] = {o: cross_auc(predictor, other) for o, other in sets.items() if o != name}
                cross = " ".join(f"{o} {v:.3f}" for o, v in r["cross"].items())
                print(f"  {name} {what}: AUC {r['auc']:.4f} (JPEG q50 {r['auc_jpeg50']:.4f}, x0.5 "
                      f"{r['auc_half']:.4f}) AP {r['ap']:.4f} acc {r['acc']:.4f} ECE {r['ece']:.4f} "
                      f"floor {'passed' if r['floor_passed'] else 'refused'}, {r['tries']} tries "
                      f"({r['train_s']:.0f}s){' cross: ' + cross if cross else ''}", flush=True)
                del predictor
                if seed is not None:
                    r = aggregate({str(seed): r})
                rows = merge_rows(rows, [(name, config, r)], list(sets))
                merged = merge_rows(old, rows, list(sets))
                all_sets = list(dict.fromkeys(n for n, _, _ in merged))
                report = render(merged, all_sets, settings, cmd, time.monotonic() - started, planned)
                write_report(out, report)  # after every run, so a long run that is stopped keeps its rows
                save_rows(out, merged)
    print("\n" + report)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
