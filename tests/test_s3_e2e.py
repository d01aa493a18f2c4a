"""End to end on a real S3 server (SeaweedFS): retrain from an s3:// data root into an s3:// artifact store,
score an s3:// inbox (only the folder with its ready marker), and browse it all in the viewer.

Nothing in the flows or the viewer knows it is S3: only the URLs (and S3_ENDPOINT_URL) differ from the
local tests. The retrain and the scoring run once for the module; each test checks one side of the result.
"""

from __future__ import annotations

import io
import json
import threading
import uuid

import pytest
from helpers import make_dataset
from PIL import Image

from dfd.registry import COMPLETE, champion_version, is_complete, list_versions, read_champion, run_key
from dfd.storage import open_store
from dfd.storage.s3 import S3Store

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def upload_folder(folder, store, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        store.upload_file(path, f"{prefix}/{path.relative_to(folder).as_posix()}")


@pytest.fixture(scope="module")
def s3_data(prefect_api, s3_server, tmp_path_factory):
    """Training data and two inbox folders on S3 (one ready, one still being uploaded), with the standard
    AWS variables, S3_ENDPOINT_URL, ARTIFACTS_URL and INBOX_URL pointing at them for the module."""
    local = tmp_path_factory.mktemp("s3-e2e")
    url = f"s3://{s3_server.bucket}/e2e-{uuid.uuid4().hex[:8]}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in s3_server.env().items():
            mp.setenv(name, value)
        mp.setenv("DFD_WORK_DIR", str(local / "work"))
        mp.setenv("DFD_MIN_AUC", "0")  # quality floor off: 1 epoch on tiny data; these tests are about S3
        mp.setenv("ARTIFACTS_URL", f"{url}/artifacts")
        mp.setenv("INBOX_URL", f"{url}/inbox")
        root = open_store(url)
        upload_folder(make_dataset(local / "data", per_class=12, size=48), root, "data")
        inbox = make_dataset(local / "inbox", per_class=3, size=40, seed=7)
        upload_folder(inbox, root, "inbox/batch-ready")
        root.write_bytes("inbox/batch-ready/_READY", b"")
        upload_folder(inbox / "real", root, "inbox/batch-partial")  # no marker, just written: not ready
        yield {"url": url, "root": root, "local": local, "inbox_local": inbox, "endpoint": s3_server.endpoint}


@pytest.fixture(scope="module")
def world(s3_data):
    """One retrain with data, synthetic images and artifacts all on S3."""
    from flows.retrain import retrain

    url = s3_data["url"]
    record = retrain(data_url=f"{url}/data", artifacts_url=f"{url}/artifacts", synthetic_url=f"{url}/synthetic",
                     epochs=1, force=True)
    return {**s3_data, "record": record, "artifacts": open_store(f"{url}/artifacts")}


@pytest.fixture(scope="module")
def scored(world):
    """One inbox scoring run over the S3 inbox (only ready folders), then a second that must find nothing."""
    from flows.score_batch import score_inbox

    first = score_inbox(quiet_seconds=3600)
    second = score_inbox(quiet_seconds=3600)
    return first, second


def test_retrain_reads_s3_data_and_publishes_the_whole_run_to_s3(world):
    record, art = world["record"], world["artifacts"]
    version = record["version"]
    assert record["decision"] == "promoted", record
    assert record["data_counts"]["train"]["real"] > 0 and record["data_counts"]["train"]["deepfake"] > 0
    assert list_versions(art) == [version] and is_complete(art, version)
    published = {o.key.rsplit("/", 1)[-1] for o in art.list(run_key(version))}
    expected = {"model.keras", "metadata.json", "metrics.json", "run.json", "split_manifest.csv", "config.json",
                "history.json", "quarantine.json", COMPLETE}
    assert expected | {f"{p}.png" for p in ("acc", "loss", "cm", "roc", "auc", "pr", "hist")} <= published
    complete = art.read_json(run_key(version, COMPLETE))
    assert {"model.keras", "metadata.json", "metrics.json"} <= set(complete["files"])
    for rel, info in complete["files"].items():  # every listed object is there, with its size
        assert art.stat(run_key(version, rel)).size == info["bytes"]
    pointer = read_champion(art)
    assert pointer["version"] == version == champion_version(art)
    assert not (world["local"] / "artifacts").exists()  # nothing went to local disk instead


def test_scoring_an_s3_inbox_scores_only_the_ready_folder_and_writes_results_to_s3(world, scored):
    first, second = scored
    art, version, url = world["artifacts"], world["record"]["version"], world["url"]
    assert len(first) == 1 and second == []  # the half-uploaded folder waits; a rerun finds nothing due
    summary = first[0]
    assert summary["model_version"] == version
    assert summary["counts"]["error"] == 0 and summary["counts"]["real"] + summary["counts"]["deepfake"] == 6
    assert summary["source"] == f"{url}/inbox/batch-ready"
    batch_id = summary["batch_id"]
    assert art.list_dirs("scores") == [batch_id]
    files = {o.key.rsplit("/", 1)[-1] for o in art.list(f"scores/{batch_id}")}
    assert {"results.csv", "results.jsonl", "summary.json"} <= files
    rows = [json.loads(line) for line in art.read_text(f"scores/{batch_id}/results.jsonl").splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(f"{lab}/{lab}_{i:03d}.png" for lab in ("real", "df")
                                                      for i in range(3))
    assert all(r["label"] in {"real", "deepfake"} and r["error"] == "" and r["model_version"] == version
               for r in rows)
    assert art.read_json(f"scores/{batch_id}/summary.json")["batch_id"] == batch_id


def test_viewer_shows_runs_plots_batches_and_thumbnails_from_s3(world, scored, tmp_path):
    from app import create_app

    art, version = world["artifacts"], world["record"]["version"]
    batch_id = scored[0][0]["batch_id"]
    app = create_app({"ARTIFACTS_URL": art.url, "S3_ENDPOINT_URL": world["endpoint"], "REFRESH_SECONDS": 0,
                      "TESTING": True, "CACHE_DIR": str(tmp_path / "viewer")})
    client = app.test_client()
    assert [r["version"] for r in client.get("/api/runs").get_json()["runs"]] == [version]
    assert client.get("/api/champion").get_json()["version"] == version
    page = client.get(f"/runs/{version}")
    assert page.status_code == 200 and version in page.get_data(as_text=True)
    detail = client.get(f"/api/runs/{version}").get_json()
    assert detail["is_champion"] and "roc" in detail["plots"]
    plot = client.get(f"/artifacts/runs/{version}/roc.png")
    assert plot.status_code == 200 and plot.mimetype == "image/png"
    assert plot.data == art.read_bytes(run_key(version, "roc.png"))
    assert client.get("/").status_code == 200
    assert batch_id in [b.get("batch_id") for b in client.get("/api/batches").get_json()["batches"]]
    batch = client.get(f"/api/batches/{batch_id}").get_json()
    assert batch["total"] == 6 and len(batch["rows"]) == 6
    assert client.get(f"/batches/{batch_id}").status_code == 200
    thumb = client.get(f"/batches/{batch_id}/thumb/0.jpg")  # made from the original image on S3
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert Image.open(io.BytesIO(thumb.data)).format == "JPEG"


def test_outages_mid_publish_and_mid_scoring_leave_nothing_half_done_and_a_rerun_finishes(
    s3_data, s3_restartable, monkeypatch
):
    from flows.retrain import retrain
    from flows.score_batch import score_folder_flow

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("S3_CONNECT_TIMEOUT", "1")
    url, server = s3_data["url"], s3_restartable
    artifacts_url = f"{url}/artifacts-outage"
    art = open_store(artifacts_url)

    # 1. The server goes away after the third object of the run and comes straight back: the
    #    publish-run task fails, Prefect retries it, and the version is published whole, then promoted.
    real_upload = S3Store.upload_file
    uploads: list[str] = []
    restarter: list[threading.Thread] = []

    def flaky_upload(self, local_path, key):
        real_upload(self, local_path, key)
        if "/runs/" in self.describe(key):
            uploads.append(key)
            if len(uploads) == 3:
                server.stop()
                restarter.append(threading.Thread(target=server.start))
                restarter[0].start()

    monkeypatch.setattr(S3Store, "upload_file", flaky_upload)
    record = retrain(data_url=f"{url}/data", artifacts_url=artifacts_url, synthetic_url=f"{url}/synthetic-outage",
                     epochs=1, force=True)
    restarter[0].join()
    monkeypatch.setattr(S3Store, "upload_file", real_upload)
    version = record["version"]
    assert len(uploads) > 3  # the publish was cut short once, then redone
    assert record["decision"] == "promoted" and list_versions(art) == [version] and is_complete(art, version)
    assert champion_version(art) == version

    # 2. The server goes away while a batch is being read and stays away: the scoring run fails and
    #    publishes no results; once it is back, a rerun scores every file.
    upload_folder(s3_data["inbox_local"], s3_data["root"], "inbox-outage/b1")
    real_read = S3Store.read_bytes
    reads = [0]

    def failing_read(self, key):
        if "inbox-outage" in self.url:
            reads[0] += 1
            if reads[0] == 3 and server.running:
                server.stop()
        return real_read(self, key)

    monkeypatch.setattr(S3Store, "read_bytes", failing_read)
    with pytest.raises(Exception):  # noqa: B017 - whichever error the flow ends with, it must not succeed
        score_folder_flow(path=f"{url}/inbox-outage/b1", artifacts_url=artifacts_url)
    monkeypatch.setattr(S3Store, "read_bytes", real_read)
    server.start()
    assert not [o.key for o in art.list("scores") if o.key.endswith(("summary.json", "results.csv"))]
    summary = score_folder_flow(path=f"{url}/inbox-outage/b1", artifacts_url=artifacts_url)
    assert summary["counts"]["error"] == 0 and summary["counts"]["real"] + summary["counts"]["deepfake"] == 6
    assert summary["model_version"] == version
