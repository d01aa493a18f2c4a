"""Prefect tasks of the retraining DAG. Each wires functions from ``dfd`` (the formats written are built in
:mod:`dfd.record`, the promotion rule is :mod:`dfd.promotion`) and passes the :class:`dfd.settings.Settings`
object, paths and small dicts; only storage I/O is retried.

The settings hold the webhook URL, a secret: it is used, never logged nor put into an artifact (files and
artifacts get :meth:`dfd.settings.Settings.public_dict` or named fields only).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_image_artifact,
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.runtime import flow_run

from dfd import augment, data, evaluate, layout, plots, promotion, record, registry, synthfake
from dfd.demo import DEMO_NOTE
from dfd.settings import Settings
from dfd.storage import StorageError, Store
from dfd.train import Entry
from tasks.progress import Progress

S = dict[str, Any]


def _stores(settings: Settings) -> tuple[Store, Store, Store]:
    """The data, synthetic and artifact stores."""
    return tuple(settings.store(url) for url in (settings.data_url, settings.synthetic_url, settings.artifacts_url))


def _split_entries(run_dir: Path, split: str, synthetic_manifest: str | None = None) -> list[Entry]:
    """The images of ``split`` from the run's manifests (see :func:`dfd.train.split_entries`). Only "reals
    only" runs have synthetic validation and test images (fakes made from those splits' reals)."""
    from dfd.train import split_entries

    path = Path(synthetic_manifest) if synthetic_manifest else run_dir / layout.SYNTHETIC_MANIFEST
    synthetic = data.read_manifest(path) if path.exists() else []
    return split_entries(data.read_manifest(run_dir / layout.SPLIT_MANIFEST), synthetic, split)


def _rename_run(name: str) -> None:
    """Give the running flow a readable name once the data fingerprint is known (best effort)."""
    try:
        from prefect.client.orchestration import get_client

        run_id = flow_run.id
        if run_id:
            with get_client(sync_client=True) as client:
                client.update_flow_run(run_id, name=name)
    except Exception as exc:  # noqa: BLE001 - a name is cosmetic; never fail the run for it
        get_run_logger().debug("could not rename the flow run: %s", exc)


def now_utc() -> str:
    """The run record's time stamp format (``2024-05-01T12:00:00+00:00``)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@task(name="reconcile-registry", retries=2, retry_delay_seconds=[2, 10])
def reconcile_registry(settings: Settings) -> list[str]:
    """Tidy what interrupted runs left in the artifact store (see :func:`dfd.registry.reconcile`)."""
    actions = registry.reconcile(settings.store(settings.artifacts_url))
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
def validate_data(settings: Settings) -> S:
    """Discover, decode and split the data; write the manifest and quarantine report to a new run folder.

    A user's error is raised as it is (:class:`dfd.data.DataError`, one line that says what to change) and
    never retried; the command line reports it in one line with exit status 2."""
    log = get_run_logger()
    data_store = settings.store(settings.data_url)
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
    run_dir = Path(settings.work_dir).resolve() / layout.RUNS / version
    run_dir.mkdir(parents=True, exist_ok=True)
    data.write_manifest(result.items, run_dir / layout.SPLIT_MANIFEST)
    (run_dir / layout.QUARANTINE_FILE).write_text(json.dumps(data.quarantine_report(result.quarantine), indent=2))
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


@task(name="check-changes")
def check_changes(settings: Settings, validated: S, started: str, force: bool) -> S | None:
    """Name the flow run after its data, then either finish early or set the run up.

    When the data fingerprint and model settings equal the last successful run's (and ``force`` is off) the
    run folder goes and the flow's ``unchanged`` result is returned; otherwise ``config.json`` is written and
    ``None`` returned."""
    log = get_run_logger()
    fp, name = validated["fingerprint"], f"retrain {started[:10]} data={validated['fingerprint'][:8]}"
    _rename_run(f"{name}{' forced' if force else ''}")
    previous = record.last_successful_run(settings.store(settings.artifacts_url)) or {}
    changed = record.changed_settings(previous.get("model_settings"), settings.model_settings())
    same_data = previous.get("data_fingerprint") == fp
    if same_data and not changed and not force:
        shutil.rmtree(validated["run_dir"], ignore_errors=True)
        _rename_run(f"{name} unchanged")
        log.info("data and model settings unchanged since the last successful run %s (fingerprint %s): nothing "
                 "to do; pass force=true to retrain anyway", previous.get("version"), fp[:12])
        create_markdown_artifact(key="retrain-unchanged", markdown=unchanged_markdown(fp, previous.get("version")),
                                 description="This run found nothing to do")
        return record.unchanged_result(fp)
    if same_data and changed:
        log.info("data unchanged, but model settings changed since run %s: %s", previous.get("version"),
                 "; ".join(changed))
    Path(validated["run_dir"], layout.CONFIG_FILE).write_text(record.config_json(settings, force))
    return None


@task(name="augment", retries=1, retry_delay_seconds=5)
def augment_data(settings: Settings, validated: S) -> S:
    """Write augmented copies of the training split to the synthetic folder (idempotent)."""
    log = get_run_logger()
    data_store, synth_store, _ = _stores(settings)
    items = data.read_manifest(Path(validated["run_dir"]) / layout.SPLIT_MANIFEST)
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
    path = Path(validated["run_dir"]) / layout.SYNTHETIC_MANIFEST
    data.write_manifest(synthetic, path)
    log.info("synthetic copies: %d in use, %d newly written to %s", len(synthetic), written, synth_store.url)
    return {"manifest": str(path), "count": len(synthetic), "written": written}


@task(name="train")
def train_model(settings: Settings, validated: S, synthetic: S) -> S:
    """Train on the training split plus its synthetic images; validate on the validation split."""
    from dfd.model import input_spec_for_data, library_versions, save_model
    from dfd.train import train

    log = get_run_logger()
    run_dir = Path(validated["run_dir"])
    synth = [it for it in data.read_manifest(synthetic["manifest"]) if it.split == "train"]
    train_entries = _split_entries(run_dir, "train", synthetic["manifest"])
    val_entries = _split_entries(run_dir, "val", synthetic["manifest"])
    spec = input_spec_for_data(settings.arch, validated["min_sides"], max_crop=settings.max_crop_size,
                               crop_size=settings.crop_size, eval_crops=settings.eval_crops,
                               face_crop=settings.face_crop)
    config = record.hyperparameters(settings)
    key = record.training_key(validated["fingerprint"], {**config, "spec": spec})
    log.info("training %s on %d images (%d synthetic), validating on %d; input %s",
             settings.arch, len(train_entries), len(synth), len(val_entries), spec)
    bar = Progress("retrain-training", f"Run {validated['version']}: epochs of at most {settings.epochs} trained "
                                       "(early stopping may end sooner)")
    model, history, stats = train(
        train_entries, val_entries, _stores(settings)[:2], arch=settings.arch, spec=spec, epochs=settings.epochs,
        batch_size=settings.batch_size, learning_rate=settings.learning_rate, width=settings.width,
        patience=settings.patience, seed=settings.seed, max_pixels=settings.max_image_pixels,
        work_dir=Path(settings.work_dir).resolve() / "train" / key, log=log.info,
        robust_aug=settings.robust_aug, scale_aug=settings.scale_aug,
        scale_aug_min=settings.scale_aug_min, weights_path=settings.weights_path,
        stall_epochs=settings.stall_epochs, max_attempts=settings.max_train_attempts,
        plateau_patience=settings.lr_plateau_patience, progress=bar,
    )
    bar.finish(f"Run {validated['version']}: trained {stats['epochs_run']} of at most {settings.epochs} epochs")
    metadata = record.model_metadata(settings, validated, spec, config, stats, versions=library_versions(),
                                     git_revision=record.git_revision(), created_at=record.utc_stamp())
    save_model(model, metadata, run_dir)
    (run_dir / layout.HISTORY_FILE).write_text(json.dumps(history, indent=2))
    log.info("trained %d epochs in %.1fs (%.0f images/s)", stats["epochs_run"], stats["train_seconds"],
             stats["train_images_per_s"])
    return {"model_dir": str(run_dir), **stats}


@task(name="evaluate")
def evaluate_model(settings: Settings, validated: S, trained: S) -> S:
    """Score validation and test with the saved model; calibrate, choose the threshold, compute metrics."""
    from dfd.model import save_model
    from dfd.predict import Predictor

    log = get_run_logger()
    stores = _stores(settings)[:2]
    run_dir = Path(validated["run_dir"])
    predictor = Predictor.from_folder(run_dir)
    val, test = _split_entries(run_dir, "val"), _split_entries(run_dir, "test")
    raw_val, raw_test = (evaluate.score_entries(predictor, part, stores, max_pixels=settings.max_image_pixels)
                         for part in (val, test))
    assessment = evaluate.assess(val, raw_val, test, raw_test, seed=settings.seed, min_auc=settings.min_auc)
    result = record.metrics_record(assessment, reals_only=bool(validated.get("reals_only")), training=trained)
    views = evaluate.check_views(predictor, val, raw_val, stores, validated.get("min_sides", []),
                                 max_pixels=settings.max_image_pixels)
    if views:
        result["views"] = views
        (log.warning if views["advice"] else log.info)(
            "validation AUC by views scored per image: %s%s",
            ", ".join(f"{k}: {v:.4f}" for k, v in views["validation_auc"].items()),
            f"; {views['advice']}" if views["advice"] else "")
    (run_dir / layout.METRICS_FILE).write_text(json.dumps(result, indent=2))
    (run_dir / layout.TEST_SCORES_FILE).write_text(record.test_scores_csv(test, assessment.test_scores),
                                                   encoding="utf-8", newline="")
    save_model(predictor.model, record.calibrated_metadata(predictor.metadata, result), run_dir)
    t, threshold, floor = result["test"], result["threshold"], result["quality_floor"]
    log.info("test: AUC %.4f  AP %.4f  EER %.4f  accuracy %.4f at threshold %.3f (%.4f at 0.5)  ECE %.4f",
             t["roc_auc"], t["average_precision"], t["eer"], t["at_threshold"]["accuracy"], threshold,
             t["at_0.5"]["accuracy"], t["ece"])
    (log.info if floor["passed"] else log.warning)("quality floor: %s", floor["reason"])
    return {"metrics": str(run_dir / layout.METRICS_FILE), "test_auc": t["roc_auc"],
            "test_ap": t["average_precision"], "test_accuracy": t["at_threshold"]["accuracy"],
            "threshold": threshold, "temperature": result["temperature"],
            "floor_passed": floor["passed"], "floor_reason": floor["reason"]}


def _cell(value: Any, count: bool = False) -> str:
    """A metrics-table value as the Prefect table artifact shows it."""
    if value is None:
        return ""
    return str(int(value)) if count else f"{value:.4f}"


@task(name="publish-plots")
def publish_plots(settings: Settings, validated: S, evaluated: S) -> list[str]:
    """Draw the plots into the run folder (published with it by ``publish-run``); returns their file names."""
    run_dir = Path(validated["run_dir"])
    y, scores = record.read_test_scores(run_dir / layout.TEST_SCORES_FILE)
    history = json.loads((run_dir / layout.HISTORY_FILE).read_text())
    return plots.write_plots(run_dir, history, y, scores, evaluated["threshold"])


def metrics_table(metrics: S, decision: S) -> list[dict[str, str]]:
    """The ``retrain-metrics`` table: one row per metric (test, validation), then the promotion decision, which
    is taken on the test split (its reason in the test column)."""
    rows = [{"metric": r["name"], "test": _cell(r["test"], r.get("count", False)),
             "validation": _cell(r["validation"], r.get("count", False))} for r in layout.metric_rows(metrics)]
    rows.append({"metric": "decision", "test": f"{decision['decision']}: {decision['reason']}", "validation": ""})
    return rows


def viewer_links(viewer_url: str, version: str, files: list[str]) -> tuple[str, dict[str, str]]:
    """The viewer's page of run ``version`` and the URL it serves each plot file at (``/artifacts/<key>``)."""
    base = viewer_url.rstrip("/")
    return (f"{base}/runs/{version}",
            {name: f"{base}/artifacts/{layout.run_key(version, name)}" for name in files})


def unchanged_markdown(fingerprint: str, previous_version: str | None) -> str:
    """What the ``retrain-unchanged`` artifact says."""
    return (f"## Nothing to do\n\nThe data (fingerprint `{fingerprint[:12]}`) and the model settings are unchanged "
            f"since the last successful run `{previous_version}`: no model was trained. Run with `force=true` "
            "(`dfd-retrain --force`) to retrain anyway.")


@task(name="publish-artifacts")
def publish_artifacts(settings: Settings, validated: S, evaluated: S, plot_files: list[str], published: S,
                      decision: S) -> list[str]:
    """Show the run in Prefect's UI: the metrics table with the promotion decision, and the plots.

    The artifact store is not a web server, but the viewer serves its files: with ``viewer_url`` set each plot
    becomes an image artifact (``retrain-plot-<name>``) and ``retrain-run`` links to the viewer's run page;
    ``retrain-plots`` always lists where the plot files are. Returns the artifact keys."""
    version = validated["version"]
    metrics = json.loads(Path(evaluated["metrics"]).read_text())
    create_table_artifact(key="retrain-metrics", table=metrics_table(metrics, decision),
                          description=f"Run {version}: test and validation metrics (threshold "
                                      f"{evaluated['threshold']:.3f}); decision {decision['decision'].upper()}")
    keys = ["retrain-metrics", "retrain-plots"]
    lines = [f"## Run `{version}`", f"Decision: **{decision['decision']}**: {decision['reason']}", "",
             f"Plots in `{published['where']}`:", ""]
    if settings.viewer_url:
        page, urls = viewer_links(settings.viewer_url, version, plot_files)
        create_link_artifact(key="retrain-run", link=page, link_text=f"run {version} in the viewer",
                             description=f"Run {version}: plots, metrics and configuration in the viewer")
        keys.append("retrain-run")
        for name, url in urls.items():
            stem = name.rsplit(".", 1)[0]  # the plot names (dfd.layout.PLOTS) are valid key parts
            create_image_artifact(image_url=url, key=f"retrain-plot-{stem}",
                                  description=f"Run {version}: {layout.PLOTS.get(stem, stem)}")
            keys.append(f"retrain-plot-{stem}")
        lines += [f"- [{name}]({url})" for name, url in urls.items()]
        lines += ["", f"[Run {version} in the viewer]({page})"]
    else:
        lines += [f"- `{name}`" for name in plot_files]
        lines += ["", "Set `VIEWER_URL` (the viewer's address) to see them here as images."]
    create_markdown_artifact(key="retrain-plots", markdown="\n".join(lines), description="This run's plots")
    return keys


@task(name="publish-run", retries=3, retry_delay_seconds=[2, 10, 30])
def publish_run(settings: Settings, validated: S) -> S:
    """Upload the whole run folder to the artifact store and mark it complete (safe to repeat)."""
    artifacts = settings.store(settings.artifacts_url)
    complete = registry.publish_run(artifacts, validated["version"], validated["run_dir"])
    where = artifacts.describe(layout.run_key(validated["version"]))
    get_run_logger().info("published %d files to %s", len(complete["files"]), where)
    return {"files": len(complete["files"]), "where": where}


@task(name="promote", retries=2, retry_delay_seconds=5)
def promote(settings: Settings, validated: S, evaluated: S) -> S:
    """Make the candidate champion if it clears the quality floor and is not worse than the champion on the
    candidate's test images; the rule and the compare-and-swap of the pointer are :mod:`dfd.promotion`'s.
    The champion is re-scored here, on exactly the candidate's test images."""
    from dfd.predict import Predictor

    log = get_run_logger()
    data_store, synth_store, artifacts = _stores(settings)
    test = _split_entries(Path(validated["run_dir"]), "test")
    y = [e.y for e in test]

    def champion_auc(version: str) -> float:
        folder = registry.fetch_model_dir(artifacts, version, Path(settings.work_dir).resolve())
        return evaluate.auc(y, evaluate.score_entries(Predictor.from_folder(folder), test, [data_store, synth_store],
                                                      max_pixels=settings.max_image_pixels))

    floor = {"passed": evaluated["floor_passed"], "reason": evaluated["floor_reason"]}
    outcome = promotion.promote(
        artifacts, validated["version"], float(evaluated["test_auc"]), floor=floor,
        tolerance=settings.promotion_tolerance, n_test=len(test), champion_auc=champion_auc,
        on_conflict=lambda: log.warning("the champion changed while deciding; deciding again"))
    (log.info if floor["passed"] else log.warning)("%s: %s", outcome["decision"].upper(), outcome["reason"])
    return outcome


@task(name="record-run", retries=3, retry_delay_seconds=[2, 10, 30])
def record_run(settings: Settings, started: str, validated: S, synthetic: S, trained: S, evaluated: S,
               plot_files: list[str], published: S, decision: S) -> S:
    """Write the run's record (``run.json``) next to its published files, then drop the local run folder
    (everything in it is published); returns the record."""
    run = record.run_record(settings, started_at=started, finished_at=now_utc(), validated=validated,
                            synthetic=synthetic, trained=trained, evaluated=evaluated, plots=plot_files,
                            where=published["where"], decision=decision)
    settings.store(settings.artifacts_url).write_json(layout.run_key(run["version"], layout.RUN_RECORD), run)
    shutil.rmtree(validated["run_dir"], ignore_errors=True)
    return run
