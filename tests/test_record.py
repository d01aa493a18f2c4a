"""The formats a retrain run writes about itself (dfd.record), built from tiny hand-made inputs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dfd import record, registry
from dfd.settings import Settings
from dfd.storage import LocalStore

VALIDATED = {"version": "20240501-120000-abcdef", "fingerprint": "ab" * 32, "counts": {"real": 40, "df": 40},
             "quarantined": 2, "groups_per_split": {"train": 50, "val": 10, "test": 10}, "demo_data": False,
             "reals_only": False, "run_dir": "/tmp/x"}
SPEC = {"mode": "crop", "size": 64, "crops": 1}


def _split(auc: float) -> dict:
    at = {"accuracy": 0.8, "balanced_accuracy": 0.8, "per_class_accuracy": {"real": 0.7, "deepfake": 0.9}}
    return {"n": 20, "roc_auc": auc, "average_precision": 0.85, "eer": 0.2, "ece": 0.05, "at_threshold": at,
            "at_0.5": {"accuracy": 0.75}}


def test_hyperparameters_hold_optional_settings_only_when_used_so_old_training_keys_hold():
    plain = record.hyperparameters(Settings.from_env({}))
    assert list(plain)[: len(record.HYPERPARAMETERS)] == list(record.HYPERPARAMETERS)
    assert plain["scale_aug"] == 0.8  # on by default
    # The key of the settings that were the defaults before 2026-12, as that version computed it: a resumed
    # training of the same settings finds its folder.
    old = record.hyperparameters(Settings.from_env({}, epochs=20, patience=6, lr_plateau_patience=0, scale_aug=0.5))
    assert record.training_key("ab" * 32, {**old, "spec": SPEC}) == "5dcf2514ba067260"
    more = record.hyperparameters(Settings.from_env({}, synthetic_fakes=0.5, robust_aug=0.2, scale_aug=0.0))
    assert more["robust_aug"] == 0.2 and "scale_aug" not in more
    assert more["synthetic_fakes"] == 0.5 and more["synthetic_version"] == record.synthfake.VERSION


def test_model_metadata_then_its_calibration():
    settings = Settings.from_env({})
    meta = record.model_metadata(settings, VALIDATED, SPEC, {"arch": "patchnet"}, {"epochs_run": 3},
                                 versions={"keras": "3"}, git_revision="abc", created_at="2024-05-01T12:00:00Z")
    assert list(meta) == ["version", "arch", "input_spec", "threshold", "temperature", "class_names",
                          "data_fingerprint", "data_counts", "demo_data", "reals_only", "hyperparameters",
                          "max_image_pixels", "versions", "git_revision", "created_at", "training"]
    assert meta["class_names"] == ["real", "deepfake"] and meta["threshold"] == 0.5
    metrics = {"threshold": 0.42, "temperature": 1.7, "test": _split(0.9), "validation": _split(0.95)}
    calibrated = record.calibrated_metadata(meta, metrics)
    assert list(calibrated) == [*meta, "metrics"] and meta["threshold"] == 0.5  # the input is left alone
    assert calibrated["threshold"] == 0.42 and calibrated["temperature"] == 1.7
    assert calibrated["metrics"]["test"] == {
        "roc_auc": 0.9, "average_precision": 0.85, "eer": 0.2, "ece": 0.05, "accuracy": 0.8,
        "per_class_accuracy": {"real": 0.7, "deepfake": 0.9}, "n": 20}
    assert record.utc_stamp(0) == "1970-01-01T00:00:00Z"


def test_metrics_record_keeps_the_order_of_metrics_json():
    from dfd.evaluate import THRESHOLD_RULE

    assessment = SimpleNamespace(threshold=0.4, temperature=1.2, test=_split(0.9), validation=_split(0.95),
                                 test_uncalibrated_ece=0.1, quality_floor={"passed": True, "reason": "ok"})
    result = record.metrics_record(assessment, reals_only=True, training={"attempts": [1], "no_signal": False,
                                                                          "epochs_run": 3, "train_seconds": 9})
    assert list(result) == ["threshold", "threshold_rule", "temperature", "test", "validation",
                            "test_uncalibrated_ece", "test_fakes", "quality_floor", "training"]
    assert result["threshold_rule"] == THRESHOLD_RULE and result["test_fakes"].startswith("synthetic")
    assert result["training"] == {"attempts": [1], "no_signal": False, "epochs_run": 3}
    assert record.metrics_record(assessment, reals_only=False, training={})["test_fakes"] == "real (df/)"


def test_test_scores_csv_is_spreadsheet_safe_and_reads_back(tmp_path: Path):
    entries = [SimpleNamespace(key="real/a.png", y=0), SimpleNamespace(key="df/=cmd.png", y=1)]
    text = record.test_scores_csv(entries, np.array([0.1234567, 0.9]))
    assert text == "key,y,score\r\nreal/a.png,0,0.123457\r\ndf/=cmd.png,1,0.900000\r\n"
    assert record.test_scores_csv([SimpleNamespace(key="=x", y=0)], [0.5]).splitlines()[1] == "'=x,0,0.500000"
    path = tmp_path / "test_scores.csv"
    path.write_text(text, encoding="utf-8", newline="")
    y, scores = record.read_test_scores(path)
    assert y.tolist() == [0, 1] and scores.tolist() == [0.123457, 0.9]
    with pytest.raises(ValueError):
        record.test_scores_csv(entries, [0.5])


def test_config_json_hides_the_webhook_and_says_whether_forced():
    settings = Settings.from_env({}, webhook_url="https://hooks.example/secret-token")
    config = json.loads(record.config_json(settings, force=True))
    assert config["webhook_url"] == "(set)" and config["force"] is True
    assert "secret-token" not in record.config_json(settings, force=False)


def test_only_model_settings_count_as_a_change():
    base = Settings.from_env({}).model_settings()
    assert "epochs" in base and "data_url" not in base and "webhook_url" not in base
    moved = Settings.from_env({}, epochs=2, artifacts_url="elsewhere").model_settings()
    assert record.changed_settings(base, moved) == [f"epochs {Settings.epochs} -> 2"]
    assert record.changed_settings(None, moved) == []  # a run recorded before settings were kept: nothing to compare


def test_last_successful_run_skips_runs_that_did_not_finish_training(tmp_path: Path):
    store = LocalStore(tmp_path / "artifacts")
    assert record.last_successful_run(store) is None
    for version, decision in (("20240101-000000-aaaaaa", "rejected"), ("20240102-000000-bbbbbb", "failed")):
        folder = tmp_path / version
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"version": version, "decision": decision}))
        registry.publish_run(store, version, folder)
    assert record.last_successful_run(store)["version"] == "20240101-000000-aaaaaa"
    assert record.unchanged_result("f" * 64)["decision"] == "unchanged"


def test_run_record_has_every_field_the_viewer_and_the_command_read():
    settings = Settings.from_env({}, data_url="data/x", webhook_url="https://hooks.example/secret")
    decision = {"decision": "promoted", "reason": "no champion yet", "champion_before": None,
                "champion_auc_on_same_test": None}
    run = record.run_record(
        settings, started_at="2024-05-01T12:00:00+00:00", finished_at="2024-05-01T12:05:00+00:00",
        validated=VALIDATED, synthetic={"count": 7},
        trained={"epochs_run": 3, "train_seconds": 12.5, "attempts": [{}, {}], "no_signal": False},
        evaluated={"test_auc": 0.9, "test_ap": 0.85, "test_accuracy": 0.8, "threshold": 0.4, "temperature": 1.1,
                   "floor_passed": True},
        plots=["acc.png"], where="artifacts/runs/v", decision=decision)
    assert list(run) == ["version", "started_at", "finished_at", "data_url", "data_fingerprint", "data_counts",
                         "arch", "model_settings", "test_auc", "test_ap", "test_accuracy", "threshold",
                         "temperature", "epochs_run", "train_seconds", "train_attempts", "no_signal",
                         "quality_floor_passed", "demo_data", "reals_only", "plots", "where", *decision]
    assert run["data_counts"] == {"real": 40, "df": 40, "quarantined": 2, "synthetic": 7,
                                  "groups": VALIDATED["groups_per_split"]}
    assert run["train_attempts"] == 2 and run["model_settings"] == settings.model_settings()
    assert "secret" not in json.dumps(run)
