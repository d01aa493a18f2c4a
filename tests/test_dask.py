"""Batch scoring on a real Dask cluster (``distributed.LocalCluster``, 2 worker processes) through prefect-dask:
the same rows as the in-process engine, local and on S3; the model loaded once per worker; a worker killed
mid-run costs only its shard, and every file still appears once."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import make_dataset, png_bytes, publish_tiny_model

from dfd.scoring.shards import load_counts

ROOT = Path(__file__).resolve().parents[1]
ROW_KEYS = ("path", "sha256", "label", "error")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("artifacts")
    publish_tiny_model(root)
    return root


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    """A real LocalCluster: 2 worker processes (one thread each), with the S3 test server's credentials in
    their environment; yields a client of it."""
    from distributed import Client, LocalCluster

    env = {**s3_server.env(), "TF_CPP_MIN_LOG_LEVEL": "2",
           "DFD_WORK_DIR": str(tmp_path_factory.mktemp("dask-work"))}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, env=env,
                      local_directory=str(tmp_path_factory.mktemp("dask-scratch"))) as lc, Client(lc) as client:
        client.wait_for_workers(2, timeout=300)
        yield client


def batch_folder(root: Path) -> Path:
    """A tiny batch with every kind of row: images, a nested one, a broken file, an exact duplicate."""
    folder = make_dataset(root, per_class=5, size=40)
    (folder / "nested").mkdir()
    (folder / "nested" / "small.png").write_bytes(png_bytes(np.full((20, 24, 3), 90, np.uint8)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    shutil.copyfile(folder / "real" / "real_000.png", folder / "copy_of_real_000.png")
    return folder


def rows_of(summary: dict) -> list[dict]:
    """The rows of results.jsonl, wherever the artifact store is (a folder or S3)."""
    from dfd.storage import open_store

    folder, name = summary["results"]["jsonl"].rsplit("/", 1)
    return [json.loads(line) for line in open_store(folder).read_text(name).splitlines()]


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert {k: x[k] for k in ROW_KEYS} == {k: y[k] for k in ROW_KEYS}
        assert (x["score"] is None) == (y["score"] is None)
        if x["score"] is not None:
            assert abs(x["score"] - y["score"]) <= 1e-6, (x, y)


def worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_local_cluster_gives_the_in_process_rows_and_loads_the_model_once_per_worker(
        prefect_api, tmp_path, artifacts, cluster):
    from flows.score_batch import score_folder_flow

    folder = batch_folder(tmp_path / "in-process")
    twin = tmp_path / "on-dask"
    shutil.copytree(folder, twin)
    single = score_folder_flow(path=str(folder), artifacts_url=str(artifacts), batch_size=3)
    on_dask = score_folder_flow(path=str(twin), artifacts_url=str(artifacts), batch_size=3,
                                dask_address=cluster.scheduler.address, shard_files=2)
    assert single["files"] == on_dask["files"] == 13
    assert on_dask["errors"] == single["errors"] == 1
    # The exact duplicate is scored, or reused when its twin's shard recorded it in the ledger first: which of
    # the two depends on the order the workers take the shards, so only the sum is fixed.
    assert on_dask["scored_this_run"] + on_dask["reused_this_run"] == 12 and on_dask["scored_this_run"] in (11, 12)
    assert_same_rows(rows_of(single), rows_of(on_dask))
    for key in ("counts", "errors_by_reason", "scored", "model_version", "threshold"):
        assert on_dask[key] == single[key], key
    prefix = artifacts / "scores" / on_dask["batch_id"]
    assert not list((prefix / "ledger").glob("*.jsonl"))  # the merge compacted every worker's chunks
    assert len((prefix / "ledger.jsonl").read_text().splitlines()) == 13

    # 7 shards over 2 workers, and each worker loaded the model once
    counts = cluster.run(load_counts)
    loads = [n for per_worker in counts.values() for n in per_worker.values()]
    assert sum(loads) >= 1 and all(n == 1 for n in loads), counts

    again = score_folder_flow(path=str(twin), artifacts_url=str(artifacts), dask_address=cluster.scheduler.address)
    assert again["scored_this_run"] == 0 and again["reused_this_run"] == 13  # idempotent: nothing to shard
    assert_same_rows(rows_of(on_dask), rows_of(again))


@pytest.mark.s3
def test_s3_folder_on_the_cluster_gives_the_in_process_rows(prefect_api, tmp_path, s3_env, cluster):
    from dfd.storage import open_store
    from flows.score_batch import score_folder_flow

    art_url = f"{s3_env}/artifacts"
    publish_tiny_model(art_url)
    folder = batch_folder(tmp_path / "batch")
    store = open_store(s3_env)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        for copy in ("one", "two"):
            store.upload_file(path, f"{copy}/{path.relative_to(folder).as_posix()}")
    single = score_folder_flow(path=f"{s3_env}/one", artifacts_url=art_url, batch_size=3)
    on_dask = score_folder_flow(path=f"{s3_env}/two", artifacts_url=art_url, batch_size=3,
                                dask_address=cluster.scheduler.address, shard_files=4)
    assert single["files"] == on_dask["files"] == 13 and on_dask["errors"] == 1
    assert_same_rows(rows_of(single), rows_of(on_dask))


@pytest.mark.slow
def test_a_worker_killed_mid_run_costs_only_its_shard(prefect_api, tmp_path, artifacts, cluster, monkeypatch):
    """Kill -9 the worker process that wrote the first ledger chunk: Dask gives its shard to the other
    worker, which skips what the dead one had already put in its chunks; every file appears exactly once."""
    from flows.score_batch import score_folder_flow

    folder = tmp_path / "kill"
    folder.mkdir()
    base = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for i in range(160):
        img = base.copy()
        img[i % 32, i // 32, 0] ^= 1  # distinct content in every file
        (folder / f"img_{i:03d}.png").write_bytes(png_bytes(img))
    from dfd.scoring import batch_id_for

    chunks = artifacts / "scores" / batch_id_for(str(folder)) / "ledger"
    monkeypatch.setenv("DFD_LEDGER_FLUSH_SECONDS", "0")  # a chunk after every batch: progress shows early
    pids_before = set(worker_pids(cluster).values())
    killed: list[int] = []

    run_ended = threading.Event()

    def kill_first_writer() -> None:
        """Watch the ledger folder until the first chunk appears (or the run ends), then kill its writer."""
        while not run_ended.is_set():
            found = [m for p in (chunks.glob("*.jsonl") if chunks.is_dir() else [])
                     if (m := re.search(r"-pid(\d+)-", p.name))]
            if found:
                pid = int(found[0].group(1))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            run_ended.wait(0.005)

    killer = threading.Thread(target=kill_first_writer, daemon=True)
    killer.start()
    try:
        summary = score_folder_flow(path=str(folder), artifacts_url=str(artifacts), batch_size=2,
                                    dask_address=cluster.scheduler.address, shard_files=40)
    finally:
        run_ended.set()
    killer.join(timeout=300)
    assert not killer.is_alive(), "the watcher of the ledger folder did not stop within 300 s of the run's end"
    assert killed, "the run ended before any ledger chunk appeared, so no worker was killed"
    print(f"\nkilled worker pid {killed[0]}; scored {summary['scored_this_run']}, reused "
          f"{summary['reused_this_run']} (recorded by the dead worker before it died)")
    assert killed[0] in pids_before
    assert summary["files"] == 160 and summary["errors"] == 0
    rows = rows_of(summary)
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in folder.iterdir())
    assert len({r["path"] for r in rows}) == 160 and all(r["label"] for r in rows)
    cluster.wait_for_workers(2, timeout=300)  # the nanny restarted the killed worker
    assert killed[0] not in worker_pids(cluster).values()


def test_cli_refuses_workers_and_an_address_together(tmp_path, artifacts):
    folder = make_dataset(tmp_path / "b", per_class=1, size=32)
    proc = subprocess.run([sys.executable, "-m", "flows.score_batch", str(folder), "--workers", "2",
                           "--dask-address", "tcp://127.0.0.1:1", "--artifacts", str(artifacts)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not both" in proc.stderr, proc.stderr


@pytest.mark.slow
def test_cli_workers_flag_starts_a_local_cluster_for_the_run(prefect_api, tmp_path, artifacts):
    """``dfd-score --workers 1``: prefect-dask's DaskTaskRunner starts a LocalCluster for the run and stops it."""
    from prefect.settings import PREFECT_API_URL

    folder = make_dataset(tmp_path / "cli-batch", per_class=2, size=32)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           "PREFECT_API_URL": PREFECT_API_URL.value(), "DFD_WORK_DIR": str(tmp_path / "work")}
    proc = subprocess.run([sys.executable, "-m", "flows.score_batch", str(folder), "--workers", "1",
                           "--shard-files", "2", "--artifacts", str(artifacts)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Creating a new Dask cluster" in proc.stdout + proc.stderr
    assert "4 files, 4 scored" in proc.stdout and "2 shard(s)" in proc.stdout + proc.stderr
