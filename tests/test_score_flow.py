"""The score-folder and score-inbox flows and their command: artifacts, inbox mode, clear errors, kill -9 resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_dataset, png_bytes, publish_tiny_model

from dfd.scoring import artifact_key, batch_id_for, results_prefix

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    publish_tiny_model(root)
    return root


def cli_env(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT),
        TF_CPP_MIN_LOG_LEVEL="2",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    api = PREFECT_API_URL.value()
    if api:  # reuse the session's test server instead of starting a temporary one per command
        env["PREFECT_API_URL"] = api
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.score_batch", *args],
        cwd=ROOT,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_artifact(key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found


def test_flow_scores_a_folder_and_publishes_a_table_artifact(prefect_api, tmp_path, artifacts):
    from flows.score_batch import score_folder_flow

    folder = make_dataset(tmp_path / "Holiday Photos", per_class=6, size=40)
    summary = score_folder_flow(path=str(folder), artifacts_url=str(artifacts), batch_size=5)
    assert summary["files"] == 12 and summary["scored"] == 12 and summary["errors"] == 0
    assert summary["batch_id"] == batch_id_for(str(folder))
    csv_path = Path(summary["results"]["csv"])
    assert csv_path == artifacts / results_prefix(summary["batch_id"]) / "results.csv"
    assert len(csv_path.read_text().splitlines()) == 13

    key = artifact_key(summary["batch_id"])
    assert key.startswith("score-holiday-photos-")
    found = read_artifact(key)
    assert found, f"no artifact {key}"
    table = found[0].data if isinstance(found[0].data, list) else json.loads(found[0].data)
    counts = {row["label"]: row["files"] for row in table}
    assert counts["total"] == 12 and counts["real"] + counts["deepfake"] == 12
    assert str(csv_path) in found[0].description
    # the progress bar of the scoring (updated per inference batch) ended at 100 %, for this batch
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (progress,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["score-progress"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert f"Batch `{summary['batch_id']}`: 12 files checked" in progress.description


def test_a_demo_models_table_artifact_carries_the_warning(prefect_api, tmp_path, artifacts):
    """A verdict of a demo-data model says so in the Prefect UI too (the batch's table artifact)."""
    import shutil

    from dfd.layout import CAVEATS, TRAIN_ON_REAL_DATA
    from flows.score_batch import score_folder_flow

    store = tmp_path / "artifacts"
    shutil.copytree(artifacts, store)
    (run_json,) = store.glob("runs/*/run.json")
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "demo_data": True}))
    folder = make_dataset(tmp_path / "demo-scored", per_class=2, size=40)
    summary = score_folder_flow(path=str(folder), artifacts_url=str(store), batch_size=5)
    assert summary["model_caveat"]["kind"] == "demo-data"
    (found, *_) = read_artifact(artifact_key(summary["batch_id"]))
    assert found.description.startswith(f"**Warning: {CAVEATS['demo-data']}** {TRAIN_ON_REAL_DATA}")


def test_flow_inbox_mode_scores_only_ready_unscored_folders(prefect_api, tmp_path, artifacts, monkeypatch):
    """``score-inbox`` (the deployment's entry point) scores each due folder with the listing its poll made
    (each folder is listed once), and a later poll only what is new or changed."""
    from dfd.storage import LocalStore
    from flows.score_batch import score_inbox

    inbox = tmp_path / "inbox"
    make_dataset(inbox / "ready-marked", per_class=3, size=40)
    (inbox / "ready-marked" / "_READY").write_text("")
    make_dataset(inbox / "half-copied", per_class=3, size=40)  # fresh and no marker: not ready
    make_dataset(inbox / "quiet", per_class=2, size=40)
    old = time.time() - 3600
    for p in (inbox / "quiet").rglob("*"):
        os.utime(p, (old, old))
    (inbox / "empty").mkdir()
    listed: list[str] = []
    real_list = LocalStore.list

    def counting_list(self, prefix=""):
        if not prefix and inbox in self.root.parents:
            listed.append(self.root.name)
        return real_list(self, prefix)

    monkeypatch.setattr(LocalStore, "list", counting_list)

    kw = {"inbox_url": str(inbox), "artifacts_url": str(artifacts), "quiet_seconds": 600}
    first = score_inbox(**kw)
    assert sorted(s["batch_id"] for s in first) == ["quiet", "ready-marked"]
    assert sorted(listed) == ["empty", "half-copied", "quiet", "ready-marked"]  # no folder listed twice
    assert not (artifacts / "scores" / "half-copied").exists()
    assert read_artifact("score-ready-marked") and read_artifact("score-inbox")

    assert score_inbox(**kw) == []  # nothing new: nothing scored

    (inbox / "ready-marked" / "late.png").write_bytes(png_bytes(np.zeros((40, 40, 3), np.uint8)))
    os.utime(inbox / "ready-marked" / "_READY")
    (inbox / "half-copied" / "_READY").write_text("")
    third = {s["batch_id"]: s for s in score_inbox(**kw)}
    assert sorted(third) == ["half-copied", "ready-marked"]
    assert third["ready-marked"]["scored_this_run"] == 1 and third["ready-marked"]["files"] == 7


def test_cli_errors_are_one_line_and_non_zero(tmp_path, artifacts):
    env = cli_env(ARTIFACTS_URL=str(artifacts))
    missing = cli(str(tmp_path / "does-not-exist"), env=env)
    (tmp_path / "empty").mkdir()
    empty = cli(str(tmp_path / "empty"), env=env)
    folder = make_dataset(tmp_path / "batch", per_class=2, size=40)
    (tmp_path / "no-model").mkdir()
    no_model = cli(str(folder), "--artifacts", str(tmp_path / "no-model"), env=env)
    both = cli(str(folder), "--inbox", env=env)
    for proc, text in (
        (missing, "does not exist"),
        (empty, "is empty"),
        (no_model, "no champion model"),
    ):
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], proc.stderr
    assert both.returncode == 2 and "either a PATH or --inbox" in both.stderr


def test_kill_9_mid_run_then_rerun_finishes_with_one_row_per_file(prefect_api, tmp_path, artifacts):
    folder = tmp_path / "big batch"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for i in range(1000):
        img = base.copy()
        y, x = i % 32, i // 32  # a different pixel changed in every file: distinct content
        img[y, x, 0] = (int(img[y, x, 0]) + 1) % 256
        (folder / f"img_{i:04d}.png").write_bytes(png_bytes(img))
    prefix = artifacts / results_prefix(batch_id_for(str(folder)))
    chunks = prefix / "ledger"
    # A ledger chunk after every batch of 2, so that partial progress shows early on however fast the machine.
    env = cli_env(ARTIFACTS_URL=str(artifacts), DFD_LEDGER_FLUSH_SECONDS="0")

    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.score_batch", str(folder), "--batch-size", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if chunks.is_dir() and len(list(chunks.glob("*.jsonl"))) >= 25:  # partial progress is on disk
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9, the whole process group
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (prefix / "summary.json").exists()  # it really died mid-run
    done_before = sum(len(p.read_text().splitlines()) for p in chunks.glob("*.jsonl"))
    print(f"\nkilled after {done_before} of 1000 files")
    assert 0 < done_before < 1000

    rerun = cli(str(folder), "--batch-size", "16", env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1000 files, 1000 scored" in rerun.stdout and "results:" in rerun.stdout
    summary = json.loads((prefix / "summary.json").read_text())
    assert summary["files"] == 1000 and summary["errors"] == 0
    assert summary["scored_this_run"] <= 1000 - done_before  # what finished before the kill is not redone
    rows = [json.loads(line) for line in (prefix / "results.jsonl").read_text().splitlines()]
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 1000
    assert sorted(paths) == sorted(p.name for p in folder.iterdir())
    csv_lines = (prefix / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1001

    again = cli(str(folder), env=env)
    assert again.returncode == 0 and "scored now 0, reused 1000" in again.stdout


def test_console_script_is_declared_and_runs():
    """``dfd-score`` is the same entry point as ``python -m flows.score_batch`` (pyproject's scripts)."""
    import shutil
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["dfd-score"] == "dfd.cli:score"
    exe = shutil.which("dfd-score") or shutil.which("dfd-score", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the package is not installed (pip install -e .), so there is no dfd-score on PATH")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120, env=cli_env())
    assert out.returncode == 0 and "--inbox" in out.stdout and "--model-version" in out.stdout


def test_a_storage_blip_is_retried_and_the_retry_resumes(prefect_api, tmp_path, artifacts, monkeypatch):
    from dfd.storage import LocalStore, StorageError
    from flows.score_batch import score_folder_flow

    folder = make_dataset(tmp_path / "blip", per_class=6, size=40)
    real_upload = LocalStore.upload_file
    failed = []

    def flaky_upload(self, local_path, key):
        if key.endswith("results.csv") and not failed:
            failed.append(key)
            raise StorageError(f"connection to S3 endpoint failed during upload of {key}")
        return real_upload(self, local_path, key)

    monkeypatch.setattr(LocalStore, "upload_file", flaky_upload)
    summary = score_folder_flow(path=str(folder), artifacts_url=str(artifacts), batch_size=4)
    assert failed, "the blip was not injected"
    assert summary["files"] == 12 and summary["errors"] == 0
    assert summary["scored_this_run"] == 0  # the retry found every file in the ledger of the failed try
    assert summary["reused_this_run"] == 12
