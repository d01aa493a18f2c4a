"""The ``retrain`` flow: validate data -> augment -> train -> evaluate -> publish plots -> promote.

In Prefect's UI a run shows its training progress (``retrain-training``), its metrics table with the
promotion decision (``retrain-metrics``), its plots (``retrain-plots``; images and a link to the viewer's run
page when ``VIEWER_URL`` is set) or, when nothing changed, ``retrain-unchanged``.

Run it with ``python -m flows.retrain`` (or ``dfd-retrain``). Without ``PREFECT_API_URL`` Prefect starts a
temporary local server for the run; with it, the run shows up in that server's UI. The command line is
:func:`dfd.cli.retrain`: it checks the options, settings and data before Prefect is even imported.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

if __name__ == "__main__":  # python -m flows.retrain: arguments and inputs are checked before Prefect is imported
    from dfd.cli import retrain as _command

    raise SystemExit(_command())

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from dfd.data import DataError  # noqa: E402
from dfd.demo import DEMO_NOTE  # noqa: E402
from dfd.notify import flow_failure_hook, notify  # noqa: E402
from dfd.settings import Settings, SettingsError  # noqa: E402
from flows import ephemeral  # noqa: E402
from tasks import retrain as t  # noqa: E402


def _run_name() -> str:
    params = flow_run.parameters or {}
    bits = [f"retrain {datetime.now(UTC):%Y-%m-%d %H:%M}"]
    if params.get("arch"):
        bits.append(f"arch={params['arch']}")
    if params.get("force"):
        bits.append("forced")
    return " ".join(bits)


@flow(name="retrain", flow_run_name=_run_name, log_prints=True, on_failure=[flow_failure_hook],
      on_crashed=[flow_failure_hook])
def retrain(
    data_url: str | None = None,
    artifacts_url: str | None = None,
    synthetic_url: str | None = None,
    arch: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    crop_size: int | None = None,
    augment_per_image: int | None = None,
    min_images_per_class: int | None = None,
    seed: int | None = None,
    robust_aug: float | None = None,
    synthetic_fakes: float | None = None,
    face_crop: bool | None = None,
    scale_aug: float | None = None,
    group_by: str | None = None,
    min_auc: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Retrain on the labelled data and promote the result if it is not worse than the champion.

    Parameters left as ``None`` come from the environment (``DFD_*``, ``DATA_URL``, ``ARTIFACTS_URL``...)
    or the defaults in :class:`dfd.settings.Settings`. With ``force=False`` a run whose data fingerprint
    and model settings equal the last successful run's finishes at once with decision ``unchanged``.
    """
    log = get_run_logger()
    started = t.now_utc()
    settings = Settings.from_env(
        data_url=data_url, artifacts_url=artifacts_url, synthetic_url=synthetic_url, arch=arch, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, crop_size=crop_size,
        augment_per_image=augment_per_image, min_images_per_class=min_images_per_class, seed=seed,
        robust_aug=robust_aug, synthetic_fakes=synthetic_fakes, face_crop=face_crop, scale_aug=scale_aug,
        group_by=group_by, min_auc=min_auc,
    )
    t.reconcile_registry(settings)
    log.info("stage 1/6: validate data (%s)", settings.data_url)
    validated = t.validate_data(settings)
    unchanged = t.check_changes(settings, validated, started, force)
    if unchanged:
        return unchanged
    log.info("stage 2/6: augment the training split")
    synthetic = t.augment_data(settings, validated)
    log.info("stage 3/6: train %s", settings.arch)
    trained = t.train_model(settings, validated, synthetic)
    log.info("stage 4/6: evaluate on the held-out test split")
    evaluated = t.evaluate_model(settings, validated, trained)
    log.info("stage 5/6: publish plots")
    plot_files = t.publish_plots(settings, validated, evaluated)
    log.info("stage 6/6: publish the run and decide on promotion")
    published = t.publish_run(settings, validated)
    decision = t.promote(settings, validated, evaluated)
    t.publish_artifacts(settings, validated, evaluated, plot_files, published, decision)
    record = t.record_run(settings, started, validated, synthetic, trained, evaluated, plot_files, published,
                          decision)
    if record["decision"] == "rejected":
        notify(settings.webhook_url, f"retrain: challenger {record['version']} rejected: {record['reason']}",
               version=record["version"], test_auc=record["test_auc"], champion=record["champion_before"])
    if validated["demo_data"]:
        log.warning("NOTE: %s", DEMO_NOTE)
    return record


def print_summary(result: dict[str, Any], seconds: float) -> None:
    """The command's closing lines: version, where, metrics, decision."""
    if result["decision"] == "unchanged":
        print(f"\nNothing to do: {result['reason']} (fingerprint {result['data_fingerprint'][:12]}). "
              "Use --force to retrain anyway.")
        return
    print("\n" + "=" * 72)
    print(f"version      {result['version']}")
    print(f"artifacts    {result['where']}")
    print(f"data         {json.dumps(result['data_counts'])}")
    print(f"test AUC     {result['test_auc']:.4f}   AP {result['test_ap']:.4f}   "
          f"accuracy {result['test_accuracy']:.4f} at threshold {result['threshold']:.3f}")
    print(f"decision     {result['decision'].upper()}: {result['reason']}")
    if result.get("train_attempts", 1) > 1:
        print(f"training     {result['train_attempts']} tries: the earlier ones stalled (see metrics.json)")
    if result.get("no_signal") or result.get("quality_floor_passed") is False:
        print("NOTE         the model learned nothing usable from this data: it was not promoted. Check the labels, "
              "add data, or see docs/QUALITY.md for what this detector can and cannot learn")
    print(f"took         {seconds:.0f}s")
    if result.get("demo_data"):
        print(f"NOTE         {DEMO_NOTE}")
    if result.get("reals_only"):
        print("NOTE         df/ was empty: trained on reals plus synthetic fakes, and the test fakes are synthetic "
              "too; these metrics say nothing about real deepfakes")
    print("=" * 72)


def main(argv: list[str] | None = None) -> int:
    """``dfd-retrain``: run the retraining flow once and print its outcome (see :func:`dfd.cli.retrain`)."""
    from dfd.cli import retrain as command

    return command(argv)


def run_command(params: dict[str, Any], force: bool = False) -> int:
    """The command's run, once :func:`dfd.cli.retrain` has checked the inputs: the flow, then its summary.

    A user's error that only the flow can see (too few usable images, too few groups) ends in one line and
    exit status 2, like the ones found before; any other failure in ``retrain failed: ...`` and status 1.
    """
    started = time.monotonic()
    ephemeral.prepare()
    try:
        result = retrain(**params, force=force)
    except (DataError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the command reports and exits non-zero
        print(f"\nretrain failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print_summary(result, time.monotonic() - started)
    return 0
