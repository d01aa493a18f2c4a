"""The retrain flow end to end under a temporary Prefect API, plus resumable training."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_dataset

from dfd import registry
from dfd.imageio import decode_image
from dfd.layout import PLOT_FILES, SYNTHETIC_MANIFEST
from dfd.predict import Predictor
from dfd.storage import open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("DFD_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("DFD_PATIENCE", "10")
    return {
        "data": make_dataset(tmp_path / "data", per_class=64, size=32),
        "artifacts": tmp_path / "artifacts",
        "synthetic": tmp_path / "synthetic",
    }


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch):
    """A local Slack-compatible receiver; yields the list of JSON bodies it got."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("WEBHOOK_URL", f"http://127.0.0.1:{server.server_address[1]}/hook")
    yield received
    server.shutdown()
    server.server_close()


def _kept_by_prefect() -> str:
    """Everything the Prefect API holds about the runs of this session: logs, artifacts, flow and task runs."""
    import json

    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs are sent in batches: send what is queued
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        for read in (client.read_logs, client.read_artifacts, client.read_flow_runs, client.read_task_runs):
            offset = 0
            while batch := read(limit=200, offset=offset):
                offset += len(batch)
                lines += (json.dumps(item.model_dump(mode="json"), default=str) for item in batch)
    return "\n".join(lines)


def latest_artifact(key: str):
    """The newest artifact under ``key``, read back through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key!r}"
    return found[0]


def table_of(artifact) -> list[dict]:
    import json

    return artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)


@pytest.mark.slow
def test_retrain_refuses_a_dud_then_promotes_then_rejects_a_worse_model_then_skips_unchanged(
        prefect_api, workspace, webhook, monkeypatch: pytest.MonkeyPatch):
    from flows.retrain import print_summary, retrain

    common = dict(data_url=str(workspace["data"]), artifacts_url=str(workspace["artifacts"]),
                  synthetic_url=str(workspace["synthetic"]), min_images_per_class=5, batch_size=8)
    store = open_store(workspace["artifacts"])

    # A model blown up by a learning rate of 10 (saturated, near-constant scores; no second try) is refused by
    # the quality floor although there is no champion to beat.
    # It scores one 24 px crop of 32 px images (DFD_EVAL_CROPS=1), so evaluation also compares five views.
    monkeypatch.setenv("DFD_MAX_TRAIN_ATTEMPTS", "1")
    monkeypatch.setenv("DFD_MAX_CROP_SIZE", "24")
    monkeypatch.setenv("DFD_EVAL_CROPS", "1")
    dud = retrain(**common, epochs=2, learning_rate=10.0)
    for var in ("DFD_MAX_TRAIN_ATTEMPTS", "DFD_MAX_CROP_SIZE", "DFD_EVAL_CROPS"):
        monkeypatch.delenv(var)
    assert dud["decision"] == "rejected" and dud["champion_before"] is None, dud
    assert dud["reason"].startswith("no better than chance"), dud
    assert dud["no_signal"] is True and dud["quality_floor_passed"] is False
    assert registry.champion_version(store) is None
    assert store.read_json(f"runs/{dud['version']}/run.json")["reason"] == dud["reason"]
    metrics = store.read_json(f"runs/{dud['version']}/metrics.json")
    assert metrics["quality_floor"]["passed"] is False and metrics["training"]["no_signal"] is True
    assert metrics["quality_floor"]["splits"]["test"]["low"] <= 0.55
    views = metrics["views"]  # both view counts are scored; advice exactly when five views gain the margin
    assert views["scored"] == 1 and set(views["validation_auc"]) == {"1", "5"}
    gain = views["validation_auc"]["5"] - views["validation_auc"]["1"]
    assert (views["advice"] != "") == (gain >= views["margin"]), views
    assert store.read_json(f"runs/{dud['version']}/metadata.json")["input_spec"]["crops"] == 1
    assert len(webhook) == 1 and "no better than chance" in webhook[0]["text"]
    closing = io.StringIO()
    with contextlib.redirect_stdout(closing):
        print_summary(dud, 1.0)
    assert "learned nothing usable from this data: it was not promoted" in closing.getvalue()
    # Prefect's UI: the metrics table ends with the decision; without VIEWER_URL the plots are listed by name.
    table = table_of(latest_artifact("retrain-metrics"))
    assert table[-1] == {"metric": "decision", "test": f"rejected: {dud['reason']}", "validation": ""}
    assert {r["metric"] for r in table} >= {"ROC AUC with 1 view", "ROC AUC with 5 views"}
    plots_md = latest_artifact("retrain-plots").data
    assert dud["version"] in plots_md and all(f"`{name}`" in plots_md for name in PLOT_FILES)
    assert "VIEWER_URL" in plots_md

    viewer = "http://viewer.example:8000"
    monkeypatch.setenv("VIEWER_URL", viewer + "/")
    first = retrain(**common, epochs=15, force=True)
    monkeypatch.delenv("VIEWER_URL")
    assert first["decision"] == "promoted", first
    version = first["version"]
    assert registry.champion_version(store) == version
    progress = latest_artifact("retrain-training")  # updated after every epoch, 100 at the end
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert f"trained {first['epochs_run']} of at most 15 epochs" in progress.description
    assert table_of(latest_artifact("retrain-metrics"))[-1]["test"] == f"promoted: {first['reason']}"
    assert latest_artifact("retrain-run").data == f"[run {version} in the viewer]({viewer}/runs/{version})"
    for name in PLOT_FILES:  # each plot as an image the viewer serves, at the URL the viewer serves it
        image = latest_artifact(f"retrain-plot-{name.removesuffix('.png')}")
        assert image.type == "image" and image.data == f"{viewer}/artifacts/runs/{version}/{name}"
        assert f"]({image.data})" in latest_artifact("retrain-plots").data
    names = {o.key.split("/", 2)[2] for o in store.list(f"runs/{version}")}
    expected = {"model.keras", "metadata.json", "metrics.json", "split_manifest.csv", "quarantine.json",
                "config.json", "history.json", "run.json", "_COMPLETE", *PLOT_FILES}
    assert expected <= names
    metrics = store.read_json(f"runs/{version}/metrics.json")
    test = metrics["test"]
    assert 0.8 <= test["roc_auc"] <= 1.0, test  # the synthetic traces are easy to learn
    assert test["n"] == sum(sum(row) for row in test["at_threshold"]["confusion_matrix"])
    assert {"at_threshold", "at_0.5", "average_precision", "eer", "ece"} <= set(test)
    assert 0.0 < metrics["threshold"] < 1.0
    metadata = store.read_json(f"runs/{version}/metadata.json")
    assert metadata["data_fingerprint"] == first["data_fingerprint"]
    assert {"tensorflow", "keras", "numpy"} <= set(metadata["versions"])

    # Parity: the published model, reloaded, gives the scores the evaluation recorded.
    predictor = Predictor.from_folder(registry.fetch_model_dir(store, version, workspace["artifacts"] / "c"))
    rows = list(csv.DictReader(store.read_text(f"runs/{version}/test_scores.csv").splitlines()))
    pixels = [decode_image((workspace["data"] / row["key"]).read_bytes(), predictor.max_pixels).pixels
              for row in rows[:4]]
    for row, score in zip(rows, predictor.score_pixels(pixels), strict=False):
        assert float(score) == pytest.approx(float(row["score"]), abs=1e-5)

    # A model that cannot learn (learning rate 0) must not replace the champion.
    worse = retrain(**common, epochs=2, learning_rate=0.0, force=True)
    assert worse["decision"] == "rejected", worse
    assert worse["champion_before"] == version
    assert registry.champion_version(store) == version
    assert store.read_json(f"runs/{worse['version']}/run.json")["decision"] == "rejected"
    assert len(webhook) == 2 and "rejected" in webhook[1]["text"]  # the promotion sent nothing

    # Same data and settings again without force: a quick "unchanged" finish that publishes nothing.
    again = retrain(**common, epochs=2, learning_rate=0.0)
    assert again["decision"] == "unchanged"
    assert len(registry.list_versions(store)) == 3
    unchanged = latest_artifact("retrain-unchanged")  # the quick run says so in Prefect's UI too
    assert "Nothing to do" in unchanged.data and again["data_fingerprint"][:12] in unchanged.data
    assert worse["version"] in unchanged.data  # the last successful run it compared with

    # The settings travel to every task, webhook URL (a secret) included; it never reaches Prefect's records.
    kept = _kept_by_prefect()
    assert "stage 6/6" in kept and "retrain-metrics" in kept  # logs and artifacts were read
    assert f"data={first['data_fingerprint'][:8]} unchanged" in kept  # the last run was renamed by its task
    assert os.environ["WEBHOOK_URL"] not in kept
    assert '"webhook_url": "(set)"' in store.read_text(f"runs/{version}/config.json")


@pytest.mark.slow
def test_reals_only_trains_on_synthetic_fakes_and_says_so(prefect_api, workspace):
    """No df/ at all plus synthetic fakes: every split gets fakes made from its own reals, nothing leaks across
    splits, and the run's record and metrics say that the test fakes are synthetic."""
    import shutil

    from flows.retrain import retrain

    shutil.rmtree(workspace["data"] / "df")
    result = retrain(data_url=str(workspace["data"]), artifacts_url=str(workspace["artifacts"]),
                     synthetic_url=str(workspace["synthetic"]), min_images_per_class=5, batch_size=8, epochs=2,
                     synthetic_fakes=1.0, min_auc=0.0)  # floor off: tested above; this is about the fakes
    assert result["decision"] == "promoted" and result["reals_only"] is True, (result["reason"], result)
    store = open_store(workspace["artifacts"])
    metrics = store.read_json(f"runs/{result['version']}/metrics.json")
    assert metrics["test_fakes"].startswith("synthetic")
    assert metrics["test"]["n_real"] > 0 and metrics["test"]["n"] > metrics["test"]["n_real"]
    def manifest(name: str) -> list[dict[str, str]]:
        return list(csv.DictReader(store.read_text(f"runs/{result['version']}/{name}").splitlines()))

    reals = manifest("split_manifest.csv")
    assert reals and all(r["key"].startswith("real/") for r in reals)
    split_of = {r["sha256"][:16]: r["split"] for r in reals}
    fakes = manifest(SYNTHETIC_MANIFEST)
    assert {r["split"] for r in fakes} == {"train", "val", "test"}
    for r in fakes:  # each fake sits in the split of the real it was made from
        assert split_of[r["key"].split("-")[1]] == r["split"]


def test_missing_data_folder_fails_with_clear_message(tmp_path: Path):
    """Checked before Prefect starts: one line, exit status 2, nothing written (more cases: test_cli.py)."""
    env = {**os.environ, "DFD_WORK_DIR": str(tmp_path / "w"), "PREFECT_API_URL": ""}
    env.pop("PREFECT_API_URL")
    proc = subprocess.run([sys.executable, "-m", "flows.retrain", "--data", str(tmp_path / "nope"),
                           "--artifacts", str(tmp_path / "a"), "--no-demo"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data folder not found or empty: {tmp_path / 'nope'} (expected real/ and df/ inside it)"]
    assert not (tmp_path / "a").exists() and not (tmp_path / "w").exists()


def test_validate_data_retries_storage_errors_only(prefect_api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's error in the validate-data task fails at once; a storage error is retried."""
    from dfd import data
    from dfd.storage import StorageError
    from flows.retrain import retrain
    from tasks import retrain as t

    assert t.validate_data.retry_condition_fn is t.retry_io_only
    monkeypatch.setenv("DFD_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setattr(t.validate_data, "retry_delay_seconds", [0])
    real_validate, calls, blip = data.validate, [], {"first_call": False}

    def validate(*args, **kwargs):
        calls.append(1)
        if blip["first_call"] and len(calls) == 1:
            raise StorageError("connection reset while listing the data")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(t.data, "validate", validate)
    few = make_dataset(tmp_path / "few", per_class=3, size=24)
    kw = {"artifacts_url": str(tmp_path / "a"), "synthetic_url": str(tmp_path / "s"), "min_images_per_class": 5}
    for storage_blip_first, expected_calls in ((False, 1), (True, 2)):
        blip["first_call"], calls[:] = storage_blip_first, []
        with pytest.raises(data.DataError, match="only 3 usable images"):
            retrain(data_url=str(few), **kw)
        assert len(calls) == expected_calls


TRAIN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from dfd.storage import open_store
from dfd.train import Entry, train
from dfd.preprocess import make_spec
store = open_store({data!r})
entries = [Entry(0, o.key, int(o.key.startswith("df/"))) for o in store.list()]
train(entries, entries[:8] + entries[-8:], [store], arch="patchnet", spec=make_spec("crop", 32, 1),
      epochs={epochs}, batch_size=8, learning_rate=1e-3, width=8, patience=100, seed=0,
      max_pixels=10**7, work_dir={work!r}, log=lambda m: print(m, flush=True), stall_epochs=0)
"""


@pytest.mark.slow
def test_killed_training_resumes_from_last_epoch(tmp_path: Path):
    data_root = make_dataset(tmp_path / "d", per_class=40, size=32)
    work = tmp_path / "work"
    script = TRAIN_SCRIPT.format(tests=str(ROOT / "tests"), data=str(data_root), work=str(work), epochs=200)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL)
    marker = work / "backup" / "training_metadata.json"
    history_csv = work / "history.csv"

    def epochs_logged() -> int:
        return len(history_csv.read_text().strip().splitlines()) - 1 if history_csv.exists() else 0

    deadline = time.time() + 240
    while not (marker.exists() and epochs_logged() >= 1) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists() and epochs_logged() >= 1, "training never checkpointed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = epochs_logged()
    assert done_before >= 1

    from dfd.preprocess import make_spec
    from dfd.storage import open_store
    from dfd.train import Entry, train

    store = open_store(data_root)
    entries = [Entry(0, o.key, int(o.key.startswith("df/"))) for o in store.list()]
    lines: list[str] = []
    total = done_before + 2
    _, history, stats = train(entries, entries[:8] + entries[-8:], [store], arch="patchnet",
                              spec=make_spec("crop", 32, 1), epochs=total, batch_size=8, learning_rate=1e-3,
                              width=8, patience=100, seed=0, max_pixels=10**7, work_dir=work, log=lines.append,
                              stall_epochs=0)  # this test is about the checkpoint, not the start
    first_epoch = int([line for line in lines if line.startswith("epoch ")][0].split()[1].split("/")[0])
    assert first_epoch > 1, lines  # it did not start again from epoch 1
    assert len(history["loss"]) == stats["epochs_run"] >= total - 1
    assert not work.exists()  # the checkpoint folder is removed after success
    assert np.isfinite(history["loss"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("previous", [True, False])
def test_a_checkpoint_torn_by_a_kill_falls_back_or_starts_over(tmp_path: Path, previous: bool):
    """A kill while Keras writes the checkpoint leaves a torn weights file. Training then resumes from the
    previous checkpoint when there is one, else starts over, and never fails."""
    import json

    from dfd.model import build_model
    from dfd.preprocess import make_spec
    from dfd.storage import open_store
    from dfd.train import Entry, train

    data_root = make_dataset(tmp_path / "d", per_class=12, size=32)
    store = open_store(data_root)
    entries = [Entry(0, o.key, int(o.key.startswith("df/"))) for o in store.list()]
    work = tmp_path / "work"
    backup = work / "backup"
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n torn in the middle of a write")
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 3, "batch": 0}))
    if previous:
        model = build_model("patchnet", 32, width=8, learning_rate=1e-3, seed=0)
        model.optimizer.build(model.trainable_variables)
        model.save_weights(str(tmp_path / "prev.weights.h5"))
        (tmp_path / "prev.weights.h5").rename(backup / "latest.weights.h5.bkp")
        (backup / "training_metadata.json.bkp").write_text(json.dumps({"epoch": 2, "batch": 0}))
    lines: list[str] = []
    progress: list[tuple[int, int]] = []
    _, history, stats = train(entries, entries[:4] + entries[-4:], [store], arch="patchnet",
                              spec=make_spec("crop", 32, 1), epochs=4, batch_size=8, learning_rate=1e-3,
                              width=8, patience=100, seed=0, max_pixels=10**7, work_dir=work, log=lines.append,
                              stall_epochs=0,  # this test is about the checkpoint, not the start
                              progress=lambda done, total: progress.append((done, total)))
    epochs = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("epoch ")]
    assert progress == [(e, 4) for e in epochs]  # the progress hook hears every epoch this training ran
    if previous:
        assert epochs == [3, 4], lines  # resumed after the previous checkpoint's 2 epochs
    else:
        assert any("starts over" in line for line in lines), lines
        assert epochs == [1, 2, 3, 4], lines
    assert np.isfinite(history["loss"]).all() and not work.exists()
