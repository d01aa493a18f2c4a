"""Prefect tasks of the retraining DAG. Each wires pure functions from ``dfd`` and passes paths and small
dicts; only storage I/O is retried."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from dfd import augment, csvsafe, data, evaluate, plots, promotion, registry, synthfake
from dfd.demo import DEMO_NOTE
from dfd.settings import Settings
from dfd.storage import Conflict, StorageError, open_store
from dfd.train import Entry

S = dict[str, Any]


def _settings(s: S) -> Settings:
    return Settings(**s)


def _stores(settings: Settings):
    endpoint = settings.s3_endpoint_url or None
    return (open_store(settings.data_url, endpoint), open_store(settings.synthetic_url, endpoint),
            open_store(settings.artifacts_url, endpoint))


def _split_entries(run_dir: Path, split: str, synthetic_manifest: str | None = None) -> list[Entry]:
    """The images of ``split`` from the run's manifests (see :func:`dfd.train.split_entries`). Only "reals
    only" runs have synthetic validation and test images (fakes made from those splits' reals)."""
    from dfd.train import split_entries

    path = Path(synthetic_manifest) if synthetic_manifest else run_dir / "synthetic_manifest.csv"
    synthetic = data.read_manifest(path) if path.exists() else []
    return split_entries(data.read_manifest(run_dir / "split_manifest.csv"), synthetic, split)


@task(name="reconcile-registry", retries=2, retry_delay_seconds=[2, 10])
def reconcile_registry(s: S) -> list[str]:
    """Tidy what interrupted runs left in the artifact store (see :func:`dfd.registry.reconcile`)."""
    actions = registry.reconcile(_stores(_settings(s))[2])
    for line in actions:
        get_run_logger().warning("registry: %s", line)
    return actions


def retry_io_only(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry storage I/O errors only. A user's error (:class:`dfd.data.DataError`,
    :class:`dfd.settings.SettingsError`: missing folders, too few images, a bad pattern) or a bug would fail
    the same way again, so it fails at once, with no retry and no second traceback."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, StorageError | OSError)


@task(name="validate-data", retries=1, retry_delay_seconds=5, retry_condition_fn=retry_io_only)
def validate_data(s: S) -> S:
    """Discover, decode and split the data; write the manifest and quarantine report to a new run folder.

    A user's error is raised as it is (:class:`dfd.data.DataError`, one line that says what to change) and
    never retried; the command line reports it in one line with exit status 2."""
    log = get_run_logger()
    settings = _settings(s)
    data_store, _, artifacts = _stores(settings)
    log.info("validating data in %s", data_store.url)
    result = data.validate(
        data_store, max_pixels=settings.max_image_pixels, max_bytes=settings.max_file_bytes,
        min_per_class=settings.min_images_per_class, fakes_optional=settings.synthetic_fakes > 0,
        progress=lambda i, n: log.info("inspected %d/%d files", i, n),
    )
    data.assign_splits(result, near_distance=settings.near_duplicate_distance,
                       val_fraction=settings.val_fraction, test_fraction=settings.test_fraction,
                       seed=settings.seed, group_by=settings.group_by)
    fp = data.fingerprint(result.items)
    version = registry.new_version(fp)
    run_dir = Path(settings.work_dir).resolve() / "runs" / version
    run_dir.mkdir(parents=True, exist_ok=True)
    data.write_manifest(result.items, run_dir / "split_manifest.csv")
    (run_dir / "quarantine.json").write_text(json.dumps(data.quarantine_report(result.quarantine), indent=2))
    counts = result.counts()
    demo = data_store.exists("README.txt") and DEMO_NOTE in data_store.read_text("README.txt")
    groups = len({it.group for it in result.items})
    per_split = data.groups_per_split(result.items)
    log.info("usable images: %s; %d set aside; %d groups of related files (duplicates, group_by=%s); "
             "groups per split: %s; fingerprint %s", json.dumps(counts), len(result.quarantine),
             data.multi_member_groups(result.items), settings.group_by, json.dumps(per_split), fp[:12])
    for q in result.quarantine[:20]:
        log.warning("set aside %s: %s %s", q.key, q.reason, q.detail)
    if demo:
        log.warning("NOTE: %s", DEMO_NOTE)
    reals_only = not any(it.label == "df" for it in result.items)
    if reals_only:
        log.warning("NOTE: no images in df/: training on reals plus synthetic fakes made from them; validation "
                    "and test fakes are synthetic too, so the test metrics say nothing about real deepfakes")
    return {
        "reals_only": reals_only,
        "version": version,
        "run_dir": str(run_dir),
        "fingerprint": fp,
        "counts": counts,
        "quarantined": len(result.quarantine),
        "groups": groups,
        "groups_per_split": per_split,
        "demo_data": bool(demo),
        "min_sides": sorted(min(it.width, it.height) for it in result.items if it.split == "train"),
    }


def last_successful_run(artifacts_url: str, endpoint: str | None = None) -> dict[str, Any] | None:
    """The record of the newest run that finished training (promoted or rejected), if any."""
    store = open_store(artifacts_url, endpoint)
    for version in registry.list_versions(store):
        run = registry.read_run(store, version)
        if run.get("decision") in ("promoted", "rejected"):
            return run
    return None


def changed_settings(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """``name old -> new`` for each model setting that differs from the previous run's (a run recorded before
    settings were kept counts as unchanged: nothing can be compared)."""
    if not previous:
        return []
    return [f"{k} {previous[k]} -> {current[k]}" for k in sorted(current)
            if k in previous and previous[k] != current[k]]


@task(name="augment", retries=1, retry_delay_seconds=5)
def augment_data(s: S, validated: S) -> S:
    """Write augmented copies of the training split to the synthetic folder (idempotent)."""
    log = get_run_logger()
    settings = _settings(s)
    data_store, synth_store, _ = _stores(settings)
    items = data.read_manifest(Path(validated["run_dir"]) / "split_manifest.csv")
    params = augment.AugmentParams(per_image=settings.augment_per_image, rotation=settings.augment_rotation,
                                   shift=settings.augment_shift, zoom=settings.augment_zoom,
                                   flip=settings.augment_flip, seed=settings.seed)
    synthetic, written = augment.augment_training_split(
        items, data_store, synth_store, params, settings.max_image_pixels,
        progress=lambda i, n: log.info("augmented %d/%d training images", i, n))
    if settings.synthetic_fakes > 0:
        splits = data.SPLITS if validated.get("reals_only") else ("train",)
        fakes, fakes_written = synthfake.synthesize_fakes(
            items, data_store, synth_store, settings.synthetic_fakes, settings.seed, settings.max_image_pixels,
            progress=lambda i, n: log.info("synthesised fakes (and re-encoded twins) of %d/%d reals", i, n),
            splits=splits)
        log.info("synthetic fakes and twins of %s reals: %d in use, %d newly written", "/".join(splits),
                 len(fakes), fakes_written)
        synthetic, written = synthetic + fakes, written + fakes_written
    path = Path(validated["run_dir"]) / "synthetic_manifest.csv"
    data.write_manifest(synthetic, path)
    log.info("synthetic copies: %d in use, %d newly written to %s", len(synthetic), written, synth_store.url)
    return {"manifest": str(path), "count": len(synthetic), "written": written}


@task(name="train")
def train_model(s: S, validated: S, synthetic: S) -> S:
    """Train on the training split plus its synthetic images; validate on the validation split."""
    from dfd.model import input_spec_for_data, library_versions, save_model
    from dfd.train import train, training_key

    log = get_run_logger()
    settings = _settings(s)
    stores = _stores(settings)[:2]
    run_dir = Path(validated["run_dir"])
    synth = [it for it in data.read_manifest(synthetic["manifest"]) if it.split == "train"]
    train_entries = _split_entries(run_dir, "train", synthetic["manifest"])
    val_entries = _split_entries(run_dir, "val", synthetic["manifest"])
    spec = input_spec_for_data(settings.arch, validated["min_sides"], max_crop=settings.max_crop_size,
                               crop_size=settings.crop_size, eval_crops=settings.eval_crops,
                               face_crop=settings.face_crop)
    config = {k: s[k] for k in ("arch", "epochs", "batch_size", "learning_rate", "width", "seed",
                                "augment_per_image", "patience")}
    # Options that are off by default join the key (and the metadata) only when used, so existing keys hold.
    config.update({k: s[k] for k in ("robust_aug", "scale_aug", "synthetic_fakes", "weights_path",
                                     "lr_plateau_patience") if s.get(k)})
    if s.get("synthetic_fakes"):
        config["synthetic_version"] = synthfake.VERSION
    key = training_key(validated["fingerprint"], {**config, "spec": spec})
    log.info("training %s on %d images (%d synthetic), validating on %d; input %s",
             settings.arch, len(train_entries), len(synth), len(val_entries), spec)
    model, history, stats = train(
        train_entries, val_entries, stores, arch=settings.arch, spec=spec, epochs=settings.epochs,
        batch_size=settings.batch_size, learning_rate=settings.learning_rate, width=settings.width,
        patience=settings.patience, seed=settings.seed, max_pixels=settings.max_image_pixels,
        work_dir=Path(settings.work_dir).resolve() / "train" / key, log=log.info,
        robust_aug=settings.robust_aug, scale_aug=settings.scale_aug,
        scale_aug_min=settings.scale_aug_min, weights_path=settings.weights_path,
        stall_epochs=settings.stall_epochs, max_attempts=settings.max_train_attempts,
        plateau_patience=settings.lr_plateau_patience,
    )
    metadata = {
        "version": validated["version"],
        "arch": settings.arch,
        "input_spec": spec,
        "threshold": 0.5,
        "temperature": 1.0,
        "class_names": ["real", "deepfake"],
        "data_fingerprint": validated["fingerprint"],
        "data_counts": validated["counts"],
        "hyperparameters": config,
        "max_image_pixels": settings.max_image_pixels,
        "versions": library_versions(),
        "git_revision": _git_revision(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "training": stats,
    }
    save_model(model, metadata, run_dir)
    (run_dir / "history.json").write_text(json.dumps(history, indent=2))
    log.info("trained %d epochs in %.1fs (%.0f images/s)", stats["epochs_run"], stats["train_seconds"],
             stats["train_images_per_s"])
    return {"model_dir": str(run_dir), **stats}


@task(name="evaluate")
def evaluate_model(s: S, validated: S, trained: S) -> S:
    """Score validation and test with the saved model; calibrate, choose the threshold, compute metrics."""
    from dfd.model import save_model
    from dfd.predict import Predictor

    log = get_run_logger()
    settings = _settings(s)
    stores = _stores(settings)[:2]
    run_dir = Path(validated["run_dir"])
    predictor = Predictor.from_folder(run_dir)
    val, test = _split_entries(run_dir, "val"), _split_entries(run_dir, "test")
    y_val, y_test = np.array([e.y for e in val]), np.array([e.y for e in test])
    # A diverged model outputs NaN; scored as 0.5 (no opinion) it is measured, and refused, like any dud.
    raw_val, raw_test = (np.nan_to_num(evaluate.score_entries(predictor, part, stores,
                                                              max_pixels=settings.max_image_pixels), nan=0.5)
                         for part in (val, test))
    temperature = evaluate.fit_temperature(y_val, raw_val)
    s_val = evaluate.apply_temperature(raw_val, temperature)
    s_test = evaluate.apply_temperature(raw_test, temperature)
    threshold = evaluate.choose_threshold(y_val, s_val)
    intervals = {name: evaluate.split_auc_interval(entries, scores, settings.seed)
                 for name, entries, scores in (("validation", val, s_val), ("test", test, s_test))}
    floor = promotion.quality_floor(intervals, settings.min_auc)
    result = {
        "threshold": threshold,
        "threshold_rule": evaluate.THRESHOLD_RULE,
        "temperature": temperature,
        "test": evaluate.metrics(y_test, s_test, threshold),
        "validation": evaluate.metrics(y_val, s_val, threshold),
        "test_uncalibrated_ece": evaluate.expected_calibration_error(y_test, raw_test),
        "test_fakes": "synthetic (made from the test reals; df/ was empty)" if validated.get("reals_only")
        else "real (df/)",
        "quality_floor": floor,
        "training": {k: trained[k] for k in ("attempts", "no_signal", "epochs_run") if k in trained},
    }
    (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    with (run_dir / "test_scores.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csvsafe.Writer(fh)
        writer.writerow(["key", "y", "score"])
        writer.writerows((e.key, e.y, f"{v:.6f}") for e, v in zip(test, s_test, strict=True))
    model, metadata = predictor.model, dict(predictor.metadata)
    metadata.update(threshold=threshold, temperature=temperature,
                    metrics={"test": _headline(result["test"]), "validation": _headline(result["validation"])})
    save_model(model, metadata, run_dir)
    t = result["test"]
    log.info("test: AUC %.4f  AP %.4f  EER %.4f  accuracy %.4f at threshold %.3f (%.4f at 0.5)  ECE %.4f",
             t["roc_auc"], t["average_precision"], t["eer"], t["at_threshold"]["accuracy"], threshold,
             t["at_0.5"]["accuracy"], t["ece"])
    (log.info if floor["passed"] else log.warning)("quality floor: %s", floor["reason"])
    return {"metrics": str(run_dir / "metrics.json"), "test_auc": t["roc_auc"],
            "test_ap": t["average_precision"], "test_accuracy": t["at_threshold"]["accuracy"],
            "threshold": threshold, "temperature": temperature,
            "floor_passed": floor["passed"], "floor_reason": floor["reason"]}



def _headline(m: S) -> S:
    return {"roc_auc": m["roc_auc"], "average_precision": m["average_precision"], "eer": m["eer"],
            "ece": m["ece"], "accuracy": m["at_threshold"]["accuracy"],
            "per_class_accuracy": m["at_threshold"]["per_class_accuracy"], "n": m["n"]}


@task(name="publish-plots")
def publish_plots(s: S, validated: S, evaluated: S) -> list[str]:
    """Draw the plots into the run folder and publish the metrics as Prefect artifacts."""
    run_dir = Path(validated["run_dir"])
    history = json.loads((run_dir / "history.json").read_text())
    with (run_dir / "test_scores.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["y"]) for r in rows])
    scores = np.array([float(r["score"]) for r in rows])
    files = plots.write_plots(run_dir, history, y, scores, evaluated["threshold"])
    m = json.loads(Path(evaluated["metrics"]).read_text())
    where = open_store(s["artifacts_url"], s.get("s3_endpoint_url") or None).describe(
        registry.run_key(validated["version"]))
    table = [
        {"metric": name, "test": _fmt(m["test"], path), "validation": _fmt(m["validation"], path)}
        for name, path in [("ROC AUC", "roc_auc"), ("average precision", "average_precision"),
                           ("EER", "eer"), ("ECE", "ece"), ("accuracy @threshold", "at_threshold/accuracy"),
                           ("balanced accuracy @threshold", "at_threshold/balanced_accuracy"),
                           ("precision", "at_threshold/precision"), ("recall", "at_threshold/recall"),
                           ("F1", "at_threshold/f1"), ("accuracy @0.5", "at_0.5/accuracy"),
                           ("real accuracy", "at_threshold/per_class_accuracy/real"),
                           ("deepfake accuracy", "at_threshold/per_class_accuracy/deepfake")]
    ]
    create_table_artifact(key="retrain-metrics", table=table,
                          description=f"Run {validated['version']}: test and validation metrics "
                                      f"(threshold {evaluated['threshold']:.3f})")
    create_markdown_artifact(
        key="retrain-plots",
        markdown=f"## Run `{validated['version']}`\nPlots in `{where}`:\n\n"
                 + "\n".join(f"- `{f}`" for f in files),
        description="Where this run's plots are")
    return files


def _fmt(m: S, path: str) -> str:
    for part in path.split("/"):
        m = m[part]
    return f"{m:.4f}"


@task(name="publish-run", retries=3, retry_delay_seconds=[2, 10, 30])
def publish_run(s: S, validated: S) -> S:
    """Upload the whole run folder to the artifact store and mark it complete (safe to repeat)."""
    settings = _settings(s)
    _, _, artifacts = _stores(settings)
    complete = registry.publish_run(artifacts, validated["version"], validated["run_dir"])
    get_run_logger().info("published %d files to %s", len(complete["files"]),
                          artifacts.describe(registry.run_key(validated["version"])))
    return {"files": len(complete["files"]), "where": artifacts.describe(registry.run_key(validated["version"]))}


@task(name="promote", retries=2, retry_delay_seconds=5)
def promote(s: S, validated: S, evaluated: S) -> S:
    """Make the candidate champion if it clears the quality floor and is not worse than the champion on the
    candidate's test images (see :mod:`dfd.promotion`).

    The champion is re-scored on exactly those images; the candidate wins if its test AUC is at least the
    champion's minus ``promotion_tolerance``. The pointer switch is conditional on the champion not having
    changed meanwhile; if it did, the decision is made again against the new champion.
    """
    from dfd.predict import Predictor

    log = get_run_logger()
    settings = _settings(s)
    data_store, synth_store, artifacts = _stores(settings)
    version = validated["version"]
    if not evaluated["floor_passed"]:
        champion = registry.champion_version(artifacts)
        log.warning("REJECTED: %s", evaluated["floor_reason"])
        return {"decision": "rejected", "reason": evaluated["floor_reason"], "champion_before": champion,
                "champion_auc_on_same_test": None}
    test = _split_entries(Path(validated["run_dir"]), "test")
    y = np.array([e.y for e in test])
    candidate_auc = float(evaluated["test_auc"])
    for _ in range(3):
        champion = registry.champion_version(artifacts)
        champion_auc = None
        if champion is None:
            promoted, reason = True, "no champion yet"
        else:
            folder = registry.fetch_model_dir(artifacts, champion, Path(settings.work_dir).resolve())
            champ_scores = evaluate.score_entries(Predictor.from_folder(folder), test, [data_store, synth_store],
                                                  max_pixels=settings.max_image_pixels)
            champion_auc = evaluate.auc(y, champ_scores)
            promoted, reason = promotion.versus_champion(candidate_auc, champion, champion_auc,
                                                         settings.promotion_tolerance, len(test))
        if not promoted:
            break
        try:
            registry.set_champion(artifacts, version, reason=reason, expected=champion)
            break
        except Conflict:
            log.warning("the champion changed while deciding; deciding again")
    else:
        raise Conflict("the champion kept changing; giving up (the champion is untouched by this run)")
    log.info("%s: %s", "PROMOTED" if promoted else "REJECTED", reason)
    return {"decision": "promoted" if promoted else "rejected", "reason": reason,
            "champion_before": champion, "champion_auc_on_same_test": champion_auc}


@task(name="record-run", retries=3, retry_delay_seconds=[2, 10, 30])
def record_run(s: S, record: S) -> None:
    """Write the run's record (``run.json``) next to its published files."""
    settings = _settings(s)
    _, _, artifacts = _stores(settings)
    artifacts.write_json(registry.run_key(record["version"], registry.RUN_RECORD), record)


def _git_revision() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
