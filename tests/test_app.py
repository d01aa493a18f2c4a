"""The Flask viewer through its test client: every page and API route, live data, and the error cases."""

from __future__ import annotations

import base64
import csv
import http.client
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes
from PIL import Image
from viewer_fixtures import (
    CHAMPION,
    PLOTS,
    REJECTED,
    batch_row,
    build_store,
    publish_fake_run,
    sample_image,
    start_server,
    stop_server,
    write_batch,
)

from app import create_app
from app.champion import FAKE_SENTENCE, REAL_SENTENCE
from dfd import layout

BATCH = "batch-0001"


@pytest.fixture(scope="session")
def store_info(tmp_path_factory) -> dict:
    """One store with a real tiny champion, a rejected run and a 40-row scored batch (built once)."""
    root = tmp_path_factory.mktemp("viewer")
    return {**build_store(root / "artifacts", batch_rows=40, batch_id=BATCH), "root": root}


@pytest.fixture(scope="session")
def store_template(store_info: dict) -> Path:
    return store_info["root"]


@pytest.fixture(scope="session")
def threshold(store_info: dict) -> float:
    """The champion's threshold (chosen on the batch's images, so that the batch has both labels)."""
    return store_info["threshold"]


@pytest.fixture
def world(store_template: Path, tmp_path: Path) -> Path:
    """A private copy of the store (tests may change it), with the batch source next to it."""
    shutil.copytree(store_template, tmp_path / "w", symlinks=True)
    root = tmp_path / "w"
    summary_path = root / "artifacts" / "scores" / BATCH / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["source"] = str(root / "inbox" / BATCH)
    summary_path.write_text(json.dumps(summary))
    return root


def make_app(world: Path, **config):
    return create_app({"ARTIFACTS_URL": str(world / "artifacts"), "REFRESH_SECONDS": 0, "TESTING": True,
                       "CACHE_DIR": str(world / "cache"), **config})


@pytest.fixture
def client(world: Path):
    return make_app(world).test_client()


def upload(client, data: bytes, name: str = "x.png", url: str = "/api/predict", **form):
    return client.post(url, data={"image": (io.BytesIO(data), name), **form}, content_type="multipart/form-data")


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    raw = png_bytes(np.zeros((1, 1, 3), np.uint8))
    ihdr = struct.pack(">II", width, height) + raw[24:29]
    chunk = b"IHDR" + ihdr
    return raw[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


# --- overview, runs -------------------------------------------------------------------------------------
def test_overview_shows_champion_metrics_plots_runs_and_batches(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert CHAMPION in html and REJECTED in html and BATCH in html
    metrics = json.loads((Path(client.application.config["ARTIFACTS_URL"]) / "runs" / CHAMPION / "metrics.json")
                         .read_text())
    test = metrics["test"]
    for label, value in [("ROC AUC", test["roc_auc"]), ("Average precision", test["average_precision"]),
                         ("Equal error rate", test["eer"]), ("Accuracy", test["at_threshold"]["accuracy"]),
                         ("Accuracy on real images", test["at_threshold"]["per_class_accuracy"]["real"]),
                         ("Accuracy on deepfakes", test["at_threshold"]["per_class_accuracy"]["deepfake"])]:
        assert label in html
        assert f"{value:.4f}" in html
    assert "In production since" in html and "Trained at" in html and "2026-01-01 00:05:00 UTC" in html
    assert "<td>70</td>" in html  # train counts
    srcs = [f"/artifacts/runs/{CHAMPION}/{p}.png" for p in PLOTS]
    for src in srcs:
        assert f'src="{src}"' in html
        img = client.get(src)
        assert img.status_code == 200 and img.mimetype == "image/png"
        assert Image.open(io.BytesIO(img.data)).size[0] > 0


def test_reals_only_runs_say_their_test_fakes_are_synthetic(client):
    html = client.get("/").get_data(as_text=True)
    assert "reals-only-notice" not in html
    run_json = Path(client.application.config["ARTIFACTS_URL"]) / "runs" / CHAMPION / "run.json"
    run = json.loads(run_json.read_text())
    run_json.write_text(json.dumps({**run, "reals_only": True}))
    for page in (client.get("/"), client.get(f"/runs/{CHAMPION}")):
        html = page.get_data(as_text=True)
        assert 'id="reals-only-notice"' in html and "the test fakes are synthetic" in html


def test_empty_batches_page_says_how_to_score_a_folder(tmp_path):
    c = create_app({"ARTIFACTS_URL": str(tmp_path / "empty"), "REFRESH_SECONDS": 0}).test_client()
    html = c.get("/batches").get_data(as_text=True)
    assert 'id="no-batches"' in html and "dfd-score PATH" in html and "dfd-score --inbox" in html


def test_overview_without_champion_explains_what_to_do(tmp_path):
    app = create_app({"ARTIFACTS_URL": str(tmp_path / "empty"), "REFRESH_SECONDS": 0})
    c = app.test_client()
    html = c.get("/").get_data(as_text=True)
    assert "no champion model yet" in html
    assert c.get("/api/champion").status_code == 404
    r = upload(c, png_bytes(sample_image(0)))
    assert r.status_code == 503 and "no champion" in r.json["error"]


def test_runs_list_and_run_page(client):
    html = client.get("/runs").get_data(as_text=True)
    assert html.index(REJECTED) < html.index(CHAMPION)  # newest first
    assert "rejected" in html and "below the champion" in html and "promoted" in html
    assert "00f00df00d" in html  # fingerprint (shortened)
    page = client.get(f"/runs/{REJECTED}").get_data(as_text=True)
    assert f"dfd-registry rollback --to {REJECTED}" in page
    champion = client.get(f"/runs/{CHAMPION}").get_data(as_text=True)
    assert "rollback --to" not in champion and 'id="is-champion"' in champion  # no hint to promote the champion
    assert "<td><code>learning_rate</code></td>" in page.split('id="config"')[1]  # configuration, as a table
    for p in PLOTS:
        assert f"/artifacts/runs/{REJECTED}/{p}.png" in page


@pytest.mark.parametrize("version", ["nope", "20990101-000000-zzzzzz", "..", ".hidden", "a%2F..%2Fb"])
def test_unknown_run_is_404(client, version):
    assert client.get(f"/runs/{version}").status_code == 404
    r = client.get(f"/api/runs/{version}")
    assert r.status_code == 404 and r.is_json and "error" in r.json


def test_incomplete_run_is_not_listed(client, world):
    (world / "artifacts" / "runs" / "20270101-000000-halfwa").mkdir()
    (world / "artifacts" / "runs" / "20270101-000000-halfwa" / "run.json").write_text("{}")
    assert "halfwa" not in client.get("/runs").get_data(as_text=True)
    assert client.get("/runs/20270101-000000-halfwa").status_code == 404


def test_api_champion_and_runs(client, threshold):
    champ = client.get("/api/champion").json
    assert champ["version"] == CHAMPION and champ["threshold"] == threshold
    assert champ["metrics"]["test"]["roc_auc"] > 0 and champ["data_counts"]["train"]["real"] == 70
    assert set(champ["plots"]) == set(PLOTS)
    runs = client.get("/api/runs").json["runs"]
    assert [r["version"] for r in runs] == [REJECTED, CHAMPION]
    assert runs[0]["decision"] == "rejected" and runs[1]["is_champion"] is True
    run = client.get(f"/api/runs/{REJECTED}").json
    assert run["rollback_command"] == f"dfd-registry rollback --to {REJECTED}"
    assert run["config"]["arch"] == "patchnet" and "test" in run["metrics"]
    assert client.get(run["plots"]["roc"]).status_code == 200


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json["status"] == "ok" and r.json["champion"] == CHAMPION


# --- batches --------------------------------------------------------------------------------------------
def batch_rows(world: Path) -> list[dict]:
    path = world / "artifacts" / "scores" / BATCH / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batches_list_and_api(client):
    html = client.get("/batches").get_data(as_text=True)
    assert BATCH in html and CHAMPION in html
    batches = client.get("/api/batches").json["batches"]
    assert batches[0]["batch_id"] == BATCH and batches[0]["files"] == 40


def test_batch_page_filters_sorts_and_pages(client, world):
    rows = batch_rows(world)
    fakes = [r for r in rows if r["label"] == "deepfake"]
    html = client.get(f"/batches/{BATCH}?label=deepfake&sort=score_desc&per_page=5").get_data(as_text=True)
    assert f"{len(fakes)} rows labelled deepfake" in html
    table = html[html.index('id="rows"'):]
    shown = [line.split(">")[1].split("<")[0] for line in table.splitlines() if 'class="score"' in line]
    expected = sorted((r["score"] for r in fakes), reverse=True)[:5]
    assert [float(s) for s in shown] == pytest.approx(expected, abs=1e-4)
    assert 'class="tag real"' not in table
    page2 = client.get(f"/batches/{BATCH}?label=deepfake&sort=score_desc&per_page=5&page=2").get_data(as_text=True)
    assert "page 2 of" in page2 and 'rel="prev"' in page2


@pytest.mark.parametrize("query, message", [
    ("label=fake", "label must be one of real, deepfake, error"),
    ("sort=name", "sort must be one of"),
    ("limit=ten", "limit must be a whole number"),
    ("limit=0", "limit must be between 1 and"),
    ("limit=100000", "limit must be between 1 and"),
    ("offset=-1", "offset must be at least 0"),
])
def test_batch_api_refuses_query_values_it_cannot_use(client, query, message):
    r = client.get(f"/api/batches/{BATCH}?{query}")
    assert r.status_code == 400 and message in r.json["error"]
    # A page is lenient: it falls back to the defaults.
    assert client.get(f"/batches/{BATCH}?{query}").status_code == 200


def test_served_csv_and_json_have_one_charset(client):
    r = client.get(f"/artifacts/scores/{BATCH}/results.csv")
    assert r.status_code == 200 and r.headers["Content-Type"] == "text/csv; charset=utf-8"
    r = client.get(f"/artifacts/scores/{BATCH}/summary.json")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    r = client.get(f"/artifacts/scores/{BATCH}/results.jsonl")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-ndjson"


def test_batch_api_label_offset_limit_and_sort(client, world):
    rows = batch_rows(world)
    errors = [r for r in rows if r["error"]]
    r = client.get(f"/api/batches/{BATCH}?label=error&offset=1&limit=2").json
    assert r["total"] == len(errors) and [x["path"] for x in r["rows"]] == [e["path"] for e in errors[1:3]]
    asc = client.get(f"/api/batches/{BATCH}?sort=score_asc&limit=500").json["rows"]
    scores = [x["score"] for x in asc if x["score"] is not None]
    assert scores == sorted(scores) and len(asc) == 40 and asc[-1]["score"] is None  # errors last
    assert client.get(f"/api/batches/{BATCH}?limit=500").json["limit"] == 500  # the bound itself is allowed


def test_batch_csv_download_is_filtered(client, world):
    rows = batch_rows(world)
    r = client.get(f"/batches/{BATCH}/results.csv?label=real")
    assert r.status_code == 200 and r.mimetype == "text/csv" and "attachment" in r.headers["Content-Disposition"]
    got = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [g["path"] for g in got] == [x["path"] for x in rows if x["label"] == "real"]
    assert set(got[0]) >= {"path", "score", "label", "error", "sha256", "model_version"}
    everything = list(csv.DictReader(io.StringIO(client.get(f"/batches/{BATCH}/results.csv").get_data(as_text=True))))
    assert len(everything) == 40


def test_batch_read_from_csv_when_there_is_no_jsonl(client, world):
    (world / "artifacts" / "scores" / BATCH / "results.jsonl").unlink()
    r = client.get(f"/api/batches/{BATCH}?label=deepfake&limit=500").json
    assert r["total"] == sum(x["label"] == "deepfake" for x in batch_rows_csv(world))
    assert all(isinstance(x["path"], str) for x in r["rows"])


def batch_rows_csv(world: Path) -> list[dict]:
    with (world / "artifacts" / "scores" / BATCH / "results.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_unknown_batch_is_404(client):
    for url in ["/batches/nope", "/api/batches/nope", "/batches/..", "/batches/nope/results.csv",
                f"/batches/{BATCH}/thumb/999.jpg"]:
        assert client.get(url).status_code == 404, url


def test_thumbnails_are_small_generated_jpegs(client, world):
    rows = batch_rows(world)
    r = client.get(f"/batches/{BATCH}/thumb/1.jpg")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    original = (world / "inbox" / BATCH / rows[1]["path"]).read_bytes()
    assert r.data != original
    img = Image.open(io.BytesIO(r.data))
    assert img.format == "JPEG" and max(img.size) <= 96
    again = client.get(f"/batches/{BATCH}/thumb/1.jpg", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304
    assert client.get(f"/batches/{BATCH}/thumb/3.jpg").status_code == 404  # the row whose file is not an image


def test_thumbnail_refuses_paths_leaving_the_source(client, world):
    secret = world / "inbox" / "secret.png"
    secret.write_bytes(png_bytes(sample_image(5)))
    path = world / "artifacts" / "scores" / BATCH / "results.jsonl"
    rows = batch_rows(world)
    rows[0]["path"] = "../secret.png"
    rows[1]["path"] = "/etc/passwd"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = path.parent / "summary.json"  # a store written by someone else: its summary agrees with the rows
    digests = {**json.loads(summary.read_text())["results_sha256"], "jsonl": sha256(path.read_bytes()).hexdigest()}
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "results_sha256": digests}))
    assert client.get(f"/batches/{BATCH}/thumb/0.jpg").status_code == 404
    assert client.get(f"/batches/{BATCH}/thumb/1.jpg").status_code == 404


# --- the caveat on a demo model's verdicts --------------------------------------------------------------
DEMO_WARNING = 'id="model-caveat" data-kind="demo-data"'


def republish_champion(world: Path, **metadata) -> None:
    """Publish the champion's files again with ``metadata`` added to its sidecar (as a run trained after the
    sidecar carried the data flags), through the registry, so that ``_COMPLETE`` matches."""
    from dfd.registry import publish_run
    from dfd.storage import open_store

    run = world / "artifacts" / "runs" / CHAMPION
    folder = world / "republish"
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("_COMPLETE"))
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps({**meta, **metadata}))
    publish_run(open_store(str(world / "artifacts")), CHAMPION, folder)


def test_a_demo_models_verdicts_say_so_everywhere(client, world):
    """The fixture's champion was trained on the demo data (its run record says so; its sidecar predates the
    flags): every place a verdict of it appears warns and says how to train on real data."""
    hint = "dfd-retrain --data DIR"
    for url in ("/", f"/runs/{CHAMPION}", f"/batches/{BATCH}"):
        html = client.get(url).get_data(as_text=True)
        assert DEMO_WARNING in html and hint in html, url
    assert "demo-data" in client.get("/batches").get_data(as_text=True)
    stored = json.loads((world / "artifacts" / "scores" / BATCH / "summary.json").read_text())
    assert stored["model_caveat"]["kind"] == "demo-data"  # written by the scorer, not made up by the viewer
    listed = client.get("/api/batches").json["batches"]
    assert [b["model_caveat"]["kind"] for b in listed] == ["demo-data"]
    assert client.get(f"/api/batches/{BATCH}").json["summary"]["model_caveat"] == stored["model_caveat"]
    for url in ("/api/champion", f"/api/runs/{CHAMPION}"):
        assert client.get(url).json["model_caveat"]["kind"] == "demo-data", url
    predicted = upload(client, png_bytes(sample_image(2, 48))).json
    assert predicted["model_caveat"]["kind"] == "demo-data" and hint in predicted["model_caveat"]["hint"]
    page = upload(client, png_bytes(sample_image(2, 48)), url="/classify").get_data(as_text=True)
    assert DEMO_WARNING in page and hint in page


@pytest.mark.parametrize("flags, kind", [({"demo_data": False, "reals_only": False}, None),
                                         ({"demo_data": False, "reals_only": True}, "synthetic-fakes-only")])
def test_the_sidecar_decides_the_caveat(world, tmp_path, flags, kind):
    """A model whose sidecar says it was trained on real labelled data gets no warning, even where its run
    record says demo (the sidecar wins); one trained without labelled deepfakes gets its own warning. A batch
    scored with it records that, and a summary from before the key renders from the model's files."""
    republish_champion(world, **flags)
    write_batch(world / "artifacts", "batch-later", world / "inbox" / "later", 3)
    client = make_app(world).test_client()
    assert upload(client, png_bytes(sample_image(2, 48))).json["model_caveat"] == (
        kind and {"kind": kind, "message": layout.CAVEATS[kind], "hint": layout.TRAIN_ON_REAL_DATA})
    pages = [upload(client, png_bytes(sample_image(2, 48)), url="/classify").get_data(as_text=True),
             client.get(f"/runs/{CHAMPION}").get_data(as_text=True),
             client.get("/batches/batch-later").get_data(as_text=True)]
    for html in pages:
        assert ('id="model-caveat"' in html) == (kind is not None)
        assert kind is None or f'data-kind="{kind}"' in html
    summary_path = world / "artifacts" / "scores" / "batch-later" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert (summary["model_caveat"] or {}).get("kind") == kind
    del summary["model_caveat"]  # as an older scorer wrote it: the viewer asks the model
    summary_path.write_text(json.dumps(summary))
    assert (client.get("/api/batches/batch-later").json["summary"]["model_caveat"] or {}).get("kind") == kind
    summary["model_version"] = "20990101-000000-gone00"  # and a model that is gone: no warning, still renders
    summary_path.write_text(json.dumps(summary))
    html = client.get("/batches/batch-later")
    assert html.status_code == 200 and 'id="model-caveat"' not in html.get_data(as_text=True)


# --- live data ------------------------------------------------------------------------------------------
def test_new_runs_batches_and_rows_appear_without_restart(client, world):
    assert "20270101-000000-newrun" not in client.get("/runs").get_data(as_text=True)
    publish_fake_run(world / "artifacts", "20270101-000000-newrun", "unchanged", "same data as the champion", 3)
    assert "20270101-000000-newrun" in client.get("/runs").get_data(as_text=True)
    assert client.get("/runs/20270101-000000-newrun").status_code == 200
    write_batch(world / "artifacts", "batch-0002", world / "inbox" / "batch-0002", 5)
    assert "batch-0002" in client.get("/").get_data(as_text=True)
    assert client.get("/api/batches/batch-0001").json["total"] == 40
    write_batch(world / "artifacts", BATCH, world / "inbox" / BATCH, 45)  # 5 more files: rescored
    assert client.get("/api/batches/batch-0001").json["total"] == 45  # results re-read after they changed


def test_results_that_do_not_match_their_summary_are_a_503_not_a_mix(client, world):
    """A reader caught between a rescoring's new results file and its new summary (``results_sha256``) gets
    a 503 with Retry-After, never rows of one run counted by the summary of another."""
    jsonl = world / "artifacts" / "scores" / BATCH / "results.jsonl"
    assert "results_sha256" in json.loads((jsonl.parent / "summary.json").read_text())
    jsonl.write_text("".join(jsonl.read_text().splitlines(keepends=True)[:10]))  # another run's rows
    for url in (f"/batches/{BATCH}", f"/api/batches/{BATCH}", f"/batches/{BATCH}/results.csv"):
        r = client.get(url)
        assert r.status_code == 503 and r.headers["Retry-After"] == "5", (url, r.status_code)
        assert "being scored again" in r.get_data(as_text=True), url
    write_batch(world / "artifacts", BATCH, world / "inbox" / BATCH, 40)  # the rescoring finishes
    assert client.get(f"/api/batches/{BATCH}").json["total"] == 40


def test_champion_reloaded_when_the_pointer_changes(client, world):
    from helpers import publish_tiny_model

    data = png_bytes(sample_image(2, 48))
    first = upload(client, data).json
    assert first["model_version"] == CHAMPION
    publish_tiny_model(world / "artifacts", version="20270202-000000-second", seed=3, epochs=1)
    second = upload(client, data).json
    assert second["model_version"] == "20270202-000000-second"
    assert client.get("/api/champion").json["version"] == "20270202-000000-second"


# --- classify -------------------------------------------------------------------------------------------
def test_classify_page_verdict_score_threshold_version_and_heatmap(client, world, threshold, tmp_path):
    assert 'name="image"' in client.get("/classify").get_data(as_text=True)
    before = sorted(p for p in world.rglob("*"))
    data = png_bytes(sample_image(1, 80))
    r = upload(client, data, "photo.png", url="/classify")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    batch = batch_row(world / "artifacts", data, tmp_path)  # what batch scoring says of the same file
    assert float(html.split('<dd id="score">')[1].split("<")[0]) == pytest.approx(batch["score"], abs=1e-4)
    sentence = FAKE_SENTENCE if batch["label"] == "deepfake" else REAL_SENTENCE
    assert f'<h2 id="verdict">{sentence}</h2>' in html
    assert f"{threshold:.4f}" in html and CHAMPION in html
    src = html.split('id="heatmap" src="')[1].split('"')[0]
    assert src.startswith("data:image/jpeg;base64,")
    heat = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert heat.size == (224, 224)  # small uploads are shown enlarged, never above EXPLAIN_DISPLAY_SIZE
    caption = html.split('id="heatmap-caption">')[1].split("</figcaption>")[0]
    # The caption fits the verdict and speaks the user's terms (no internal layer names).
    wanted = "made it call this image a deepfake" if batch["label"] == "deepfake" else "not enough to call"
    assert wanted in caption and "layer" not in caption and "Grad-CAM" in caption
    assert sorted(p for p in world.rglob("*") if "cache" not in p.parts) == [
        p for p in before if "cache" not in p.parts
    ]  # nothing stored


def test_api_predict_gives_the_batch_score(client, world, threshold, tmp_path):
    data = png_bytes(sample_image(4, 50))
    r = upload(client, data)
    assert r.status_code == 200
    body = r.json
    batch = batch_row(world / "artifacts", data, tmp_path)  # what batch scoring says of the same file
    assert body["score"] == pytest.approx(batch["score"], abs=2e-6) and body["label"] == batch["label"]
    assert body["verdict"] == (FAKE_SENTENCE if body["score"] >= threshold else REAL_SENTENCE)
    assert body["threshold"] == threshold and "heatmap" not in body
    explained = upload(client, data, url="/api/predict?explain=1").json
    assert explained["heatmap"].startswith("data:image/jpeg;base64,")


def test_heatmap_for_large_and_small_images(client):
    big = np.asarray(Image.fromarray(sample_image(6, 64)).resize((700, 500)))
    r = upload(client, png_bytes(big), url="/api/predict?explain=1").json
    assert "shrunk" in r["heatmap_note"]
    tiny = upload(client, png_bytes(sample_image(7, 12)), url="/api/predict?explain=1").json
    assert tiny["heatmap"].startswith("data:image/jpeg")


def test_big_upload_scored_like_batch_and_explained_on_a_bounded_copy(client, world, monkeypatch, tmp_path):
    """Issue 14: a big image is scored on all its pixels (the batch score), while Grad-CAM and the overlay
    work on a copy at most EXPLAIN_MAX_SIDE px, so memory stays a small multiple of the decoded image."""
    import tracemalloc

    from dfd.explain import GradCam

    upload(client, png_bytes(sample_image(0, 64)))  # loads the model outside the measurement
    big = np.asarray(Image.fromarray(sample_image(5, 64)).resize((3000, 2400), Image.Resampling.NEAREST))
    data = png_bytes(big)
    seen: list[tuple[int, ...]] = []
    real_heatmap = GradCam.heatmap

    def spy(self, pixels, *args, **kw):
        seen.append(pixels.shape)
        return real_heatmap(self, pixels, *args, **kw)

    monkeypatch.setattr(GradCam, "heatmap", spy)
    tracemalloc.start()
    try:
        r = upload(client, data, url="/api/predict?explain=1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.json
    expected = batch_row(world / "artifacts", data, tmp_path)["score"]
    assert body["score"] == pytest.approx(expected, abs=2e-6)  # the same score as batch scoring
    assert (body["width"], body["height"]) == (3000, 2400)
    assert seen and max(seen[0][:2]) <= 1024 and "shrunk" in body["heatmap_note"]
    heat = Image.open(io.BytesIO(base64.b64decode(body["heatmap"].split(",", 1)[1])))
    assert max(heat.size) == 448
    # Decoding alone holds the pixels twice (Pillow's bytes, then the array); before the fix the full-size
    # heatmap and its colour layers took 20x the decoded image.
    assert peak < 3 * big.nbytes, f"{peak / 1e6:.0f} MB traced for a {big.nbytes / 1e6:.0f} MB image"


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds (a generous bound)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.01)


def test_busy_predictions_wait_in_a_bounded_queue_then_get_503_with_retry_after(world):
    """At most PREDICT_CONCURRENCY uploads are worked on and PREDICT_QUEUE wait; the rest get 503 with
    Retry-After (JSON for the API, the form with the message for the page), and a waiting one is served
    when a slot frees. The test holds the only slot itself, so nothing depends on timing."""
    import threading

    app = make_app(world, PREDICT_CONCURRENCY=1, PREDICT_QUEUE=1, PREDICT_WAIT_SECONDS=600)
    gate = app.extensions["dfd_model"].gate
    data = png_bytes(sample_image(0))
    queued: list = []
    with gate.slot():
        waiter = threading.Thread(target=lambda: queued.append(upload(app.test_client(), data)))
        waiter.start()
        wait_for(lambda: gate.waiting == 1, "the second upload to queue for the held slot")
        r = upload(app.test_client(), data)
        assert r.status_code == 503 and "busy" in r.json["error"]
        assert int(r.headers["Retry-After"]) >= 1
        page = upload(app.test_client(), data, url="/classify")
        assert page.status_code == 503 and int(page.headers["Retry-After"]) >= 1
        assert 'id="error"' in page.get_data(as_text=True) and "busy" in page.get_data(as_text=True)
        assert not queued  # still waiting while the slot is held
    waiter.join(timeout=300)
    assert not waiter.is_alive(), "the queued upload was not answered within 300 s of the slot freeing"
    assert queued[0].status_code == 200 and queued[0].json["model_version"] == CHAMPION
    assert upload(app.test_client(), data).status_code == 200

    impatient = make_app(world, PREDICT_CONCURRENCY=1, PREDICT_QUEUE=4, PREDICT_WAIT_SECONDS=0, THUMB_CONCURRENCY=1)
    with impatient.extensions["dfd_model"].gate.slot():
        r = upload(impatient.test_client(), data)
        assert r.status_code == 503 and "within 0 s" in r.json["error"] and r.headers["Retry-After"]
    with impatient.extensions["dfd_thumbs"].gate.slot():  # thumbnails wait for their own slots too
        thumb = impatient.test_client().get(f"/batches/{BATCH}/thumb/0.jpg")
        assert thumb.status_code == 503 and thumb.headers["Retry-After"]
    assert impatient.test_client().get(f"/batches/{BATCH}/thumb/0.jpg").status_code == 200


def test_readyz_loads_and_warms_the_champion(client, tmp_path):
    assert client.get("/healthz").json["model_loaded"] is None
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json == {"status": "ready", "model_version": CHAMPION}
    assert client.get("/healthz").json["model_loaded"] == CHAMPION
    empty = create_app({"ARTIFACTS_URL": str(tmp_path / "none"), "TESTING": True}).test_client()
    r = empty.get("/readyz")
    assert r.status_code == 503 and r.json["status"] == "no model"


def test_keep_uploads_when_configured(world):
    keep = world / "kept"
    c = make_app(world, KEEP_UPLOADS_URL=str(keep)).test_client()
    assert upload(c, png_bytes(sample_image(1))).status_code == 200
    assert len(list(keep.iterdir())) == 1


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (b"hello, I am text", "fake.png", "not an image"),
        (b"", "empty.png", "empty"),
        (png_bytes(sample_image(0))[:60], "cut.png", "image"),
        (bomb_png(), "bomb.png", "too large"),
    ],
)
def test_bad_uploads_are_400_with_a_message(client, data, name, reason):
    for url in ("/api/predict", "/classify"):
        r = upload(client, data, name, url=url)
        assert r.status_code == 400, (url, r.data[:200])
        text = r.json["error"] if r.is_json else r.get_data(as_text=True)
        assert reason in text


def test_missing_file_is_400(client):
    assert client.post("/api/predict", data={}, content_type="multipart/form-data").status_code == 400


def test_oversize_upload_is_413(world):
    c = make_app(world, MAX_CONTENT_LENGTH=2000).test_client()
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert len(big) > 2000
    r = upload(c, big)
    assert r.status_code == 413 and "larger than the limit" in r.json["error"]
    assert upload(c, big, url="/classify").status_code == 413


def test_bodies_over_the_servers_limit_get_the_security_headers_too(world):
    """Waitress answers a body over its own limit (the upload limit plus 1 MB of form overhead) with its own
    413, before the app runs: that answer carries the app's security headers as well."""
    from app import SECURITY_HEADERS

    limit = 2000
    proc, base = start_server(world / "artifacts", env={"VIEWER_MAX_CONTENT_LENGTH": str(limit),
                                                        "DFD_WORK_DIR": str(world / "work")})
    try:
        host, port = base.split("//", 1)[1].split(":")
        # Waitress refuses on the Content-Length alone (no body sent); the app once it has the whole body.
        for length, body, who in ((limit + 1024 * 1024 + 1, b"", "waitress"), (limit + 1, b"x" * (limit + 1), "app")):
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
            try:
                conn.putrequest("POST", "/api/predict")
                conn.putheader("Content-Type", "application/octet-stream")
                conn.putheader("Content-Length", str(length))
                conn.endheaders(body or None)
                resp = conn.getresponse()
                resp.read()
            finally:
                conn.close()
            assert resp.status == 413, who
            for name, value in SECURITY_HEADERS.items():
                assert resp.getheader(name) == value, (who, name)
    finally:
        stop_server(proc)


def test_token_protects_upload_and_predict(world):
    c = make_app(world, VIEWER_TOKEN="s3cret").test_client()
    data = png_bytes(sample_image(0))
    assert upload(c, data).status_code == 401
    assert upload(c, data, token="wrong").status_code == 401
    assert upload(c, data, url="/classify").status_code == 401
    assert upload(c, data, token="s3cret").status_code == 200
    r = c.post("/api/predict", data={"image": (io.BytesIO(data), "a.png")},
               headers={"Authorization": "Bearer s3cret"}, content_type="multipart/form-data")
    assert r.status_code == 200
    assert 'name="token"' in c.get("/classify").get_data(as_text=True)
    assert c.get("/").status_code == 200  # reading needs no token


# --- files and safety -----------------------------------------------------------------------------------
def test_traversal_and_non_servable_files_are_404(client, world):
    outside = world / "outside.png"
    outside.write_bytes(png_bytes(sample_image(0)))
    run_dir = world / "artifacts" / "runs" / CHAMPION
    (run_dir / "evil.png").symlink_to(outside)
    (world / "artifacts" / "runs" / "linked").symlink_to(world)
    assert client.get(f"/artifacts/runs/{CHAMPION}/roc.png").status_code == 200
    for url in [
        "/artifacts/../outside.png",
        "/artifacts/runs/../../outside.png",
        "/artifacts/runs/%2e%2e/%2e%2e/outside.png",
        "/artifacts/runs/%2E%2E%2F%2E%2E%2Foutside.png",
        f"/artifacts/runs/{CHAMPION}/..%2f..%2f..%2foutside.png",
        f"/artifacts/runs/{CHAMPION}/%252e%252e/%252e%252e/outside.png",
        f"/artifacts/runs/{CHAMPION}/..\\..\\..\\outside.png",
        "/artifacts//etc/passwd",
        "/artifacts/%2Fetc%2Fpasswd",
        f"/artifacts/runs/{CHAMPION}/evil.png",
        "/artifacts/runs/linked/outside.png",
        f"/artifacts/runs/{CHAMPION}/model.keras",
        f"/artifacts/runs/{CHAMPION}/.hidden.png",
        "/artifacts/champion.json",
        "/artifacts/runs/../champion.json",
        f"/artifacts/runs/{CHAMPION}/roc.png%00.txt",
    ]:
        r = client.get(url)
        assert r.status_code == 404, url
        assert b"PNG" not in r.data[:8]


def test_templates_escape_what_the_store_says(client, world):
    path = world / "artifacts" / "scores" / BATCH / "summary.json"
    summary = json.loads(path.read_text())
    summary["source"] = "<script>alert(1)</script>"
    summary["model_version"] = '"><img src=x onerror=alert(1)>'
    path.write_text(json.dumps(summary))
    html = client.get(f"/batches/{BATCH}").get_data(as_text=True)
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "<img src=x" not in html
    assert "script-src" not in client.get("/").headers["Content-Security-Policy"]  # no scripts allowed at all


def test_configuration_order_and_no_debug(world, monkeypatch):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    monkeypatch.setenv("ARTIFACTS_URL", str(world / "artifacts"))
    monkeypatch.setenv("VIEWER_MAX_CONTENT_LENGTH", "12345")
    monkeypatch.setenv("VIEWER_PAGE_SIZE", "7")
    app = create_app({"PAGE_SIZE": 9})
    assert app.debug is False and app.config["DEBUG"] is False
    assert app.config["MAX_CONTENT_LENGTH"] == 12345  # environment over default
    assert app.config["PAGE_SIZE"] == 9  # test override over environment
    assert app.config["ARTIFACTS_URL"] == str(world / "artifacts")
    assert app.config["VIEWER_TOKEN"] == "" and app.config["KEEP_UPLOADS_URL"] == ""
    monkeypatch.setenv("VIEWER_PAGE_SIZE", "many")
    with pytest.raises(ValueError, match="VIEWER_PAGE_SIZE"):
        create_app()


def test_app_imports_neither_prefect_nor_training_code(world):
    """Import the app, render every page and classify in a fresh interpreter, then inspect sys.modules."""
    code = f"""
import io, sys, json
from app import create_app
sys.path.insert(0, "tests")
from helpers import png_bytes
from viewer_fixtures import sample_image
c = create_app({{"REFRESH_SECONDS": 0}}).test_client()
for url in ["/", "/runs", "/runs/{CHAMPION}", "/batches", "/batches/{BATCH}", "/api/champion", "/classify"]:
    assert c.get(url).status_code == 200, url
r = c.post("/api/predict?explain=1", data={{"image": (io.BytesIO(png_bytes(sample_image(0))), "a.png")}},
           content_type="multipart/form-data")
assert r.status_code == 200, r.data
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "tasks", "flows")
             or m in ("dfd.train", "dfd.data", "dfd.augment", "dfd.evaluate", "dfd.plots"))
print(json.dumps({{"bad": bad, "keras": "keras" in sys.modules}}))
"""
    env = {**os.environ, "ARTIFACTS_URL": str(world / "artifacts"), "DFD_WORK_DIR": str(world / "work")}
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["keras"] is True  # it did load the model, so the check is meaningful
    assert result["bad"] == []


@pytest.mark.slow
def test_real_retrain_and_scoring_outputs_render(prefect_api, tmp_path, monkeypatch):
    """What the real flows publish (not fixtures written here) renders: plots, metrics, batch rows, thumbs."""
    from helpers import make_dataset

    from flows.retrain import retrain
    from flows.score_batch import score_folder_flow

    monkeypatch.setenv("DFD_WORK_DIR", str(tmp_path / "work"))
    artifacts = tmp_path / "artifacts"
    record = retrain(data_url=str(make_dataset(tmp_path / "data", per_class=16, size=32)),
                     artifacts_url=str(artifacts), synthetic_url=str(tmp_path / "synthetic"),
                     min_images_per_class=5, batch_size=16, epochs=2,
                     min_auc=0.0)  # quality floor off: 2 epochs on tiny data; this test is about the pages
    assert record["decision"] == "promoted"
    inbox = make_dataset(tmp_path / "inbox" / "today", per_class=4, size=40, seed=9)
    (inbox / "real" / "broken.png").write_bytes(b"not an image")
    summary = score_folder_flow(path=str(inbox), artifacts_url=str(artifacts), batch_size=4)

    c = create_app({"ARTIFACTS_URL": str(artifacts), "REFRESH_SECONDS": 0, "CACHE_DIR": str(tmp_path / "c")}
                   ).test_client()
    html = c.get("/").get_data(as_text=True)
    assert record["version"] in html and "ROC AUC" in html and "Equal error rate" in html
    champ = c.get("/api/champion").json
    assert champ["version"] == record["version"] and set(PLOTS) <= set(champ["plots"])
    for url in champ["plots"].values():
        assert f'src="{url}"' in html and c.get(url).status_code == 200
    run = c.get(f"/api/runs/{record['version']}").json
    assert run["run"]["decision"] == "promoted" and run["metrics"]["test"]["roc_auc"] == record["test_auc"]
    batch_id = summary["batch_id"]
    assert batch_id in c.get("/batches").get_data(as_text=True)
    api = c.get(f"/api/batches/{batch_id}?limit=500").json
    assert api["total"] == summary["files"] == 9
    assert sum(bool(r["error"]) for r in api["rows"]) == summary["counts"]["error"] == 1
    page = c.get(f"/batches/{batch_id}").get_data(as_text=True)
    assert "broken.png" in page and f"{summary['files']}</dd>" in page
    good = next(i for i, r in enumerate(api["rows"]) if not r["error"])
    thumb = c.get(f"/batches/{batch_id}/thumb/{good}.jpg")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    verdict = upload(c, (inbox / "df" / "df_000.png").read_bytes()).json
    assert verdict["model_version"] == record["version"]
    # Trained on real labelled data (not the demo's, with deepfakes): its verdicts carry no caveat anywhere.
    assert verdict["model_caveat"] is None and summary["model_caveat"] is None
    assert run["metadata"]["demo_data"] is False and run["metadata"]["reals_only"] is False
    assert 'id="model-caveat"' not in page + html


@pytest.mark.s3
def test_viewer_reads_an_s3_artifact_store(world, s3_env):
    """The same pages from SeaweedFS (a real S3 server): overview, plots, batch rows, thumbnails, predict."""
    from dfd.storage import open_store

    art, src = open_store(f"{s3_env}/artifacts"), open_store(f"{s3_env}/inbox")
    for base, store in ((world / "artifacts", art), (world / "inbox" / BATCH, src)):
        for path in base.rglob("*"):
            if path.is_file():
                store.upload_file(path, path.relative_to(base).as_posix())
    summary = json.loads((world / "artifacts" / "scores" / BATCH / "summary.json").read_text())
    art.write_json(f"scores/{BATCH}/summary.json", {**summary, "source": f"{s3_env}/inbox"})
    c = create_app({"ARTIFACTS_URL": f"{s3_env}/artifacts", "REFRESH_SECONDS": 0,
                    "CACHE_DIR": str(world / "s3cache")}).test_client()
    html = c.get("/").get_data(as_text=True)
    assert CHAMPION in html and BATCH in html
    assert c.get(f"/artifacts/runs/{CHAMPION}/roc.png").status_code == 200
    assert c.get("/artifacts/runs/%2e%2e/champion.json").status_code == 404
    assert c.get(f"/api/batches/{BATCH}?label=error").json["total"] == summary["counts"]["error"]
    assert c.get(f"/batches/{BATCH}/thumb/1.jpg").mimetype == "image/jpeg"
    r = upload(c, png_bytes(sample_image(3)))
    assert r.status_code == 200 and r.json["model_version"] == CHAMPION
    assert (world / "s3cache" / "models" / CHAMPION / "model.keras").is_file()  # downloaded, then loaded


def test_tiles_cover_the_image_within_the_view_budget():
    from dfd.preprocess import tile_corners

    for h, w, size, budget in [(500, 700, 32, 64), (32, 32, 32, 64), (20, 90, 32, 64), (1000, 40, 64, 9)]:
        corners, hh, ww = tile_corners(h, w, size, budget)
        assert len(corners) <= budget and hh >= size and ww >= size
        covered = np.zeros((hh, ww), bool)
        for y, x in corners:
            assert 0 <= y <= hh - size and 0 <= x <= ww - size
            covered[y : y + size, x : x + size] = True
        assert covered.all()


def test_gradcam_for_a_resize_model():
    """The seed's architecture (whole image resized) gets a heatmap over the whole image too."""
    from helpers import train_tiny_model

    from dfd.explain import GradCam
    from dfd.predict import Predictor

    model, metadata = train_tiny_model(arch="seed-cnn", per_class=6, epochs=1)
    heat, note = GradCam(Predictor(model, {**metadata, "version": "seed"})).heatmap(sample_image(2, 90)[:70])
    assert heat is not None and heat.shape == (70, 90) and "Grad-CAM" in note
    assert heat.min() >= 0 and heat.max() <= 1


@pytest.mark.parametrize("label, wanted", [("deepfake", "made it call this image a deepfake"),
                                           ("real", "it was not enough to call the image a deepfake")])
def test_heatmap_caption_fits_each_verdict(tmp_path, label, wanted):
    from flask import render_template

    from app.champion import Verdict

    app = create_app({"ARTIFACTS_URL": str(tmp_path / "none"), "TESTING": True})
    verdict = Verdict(label=label, sentence="s", score=0.5, threshold=0.5, model_version="v1", width=8, height=8,
                      format="PNG", heatmap="data:image/jpeg;base64,AA==", heatmap_note="Computed with Grad-CAM")
    with app.test_request_context("/classify"):
        html = render_template("classify.html", verdict=verdict, error=None, token_required=False)
    caption = html.split('id="heatmap-caption">')[1].split("</figcaption>")[0]
    assert wanted in caption and "Computed with Grad-CAM." in caption


def test_times_are_shown_as_people_read_them(client):
    from app import _when

    assert _when("2026-12-02T05:43:10.123456+00:00") == "2026-12-02 05:43:10 UTC"
    assert _when("2026-12-02T06:43:10+01:00") == "2026-12-02 05:43:10 UTC"
    assert _when("2026-12-02T05:43:10Z") == "2026-12-02 05:43:10 UTC"
    assert _when(None) == "–" and _when("not a time") == "not a time"
    html = client.get("/").get_data(as_text=True)
    facts = html.split("In production since")[1].split("</dl>")[0]
    assert re.match(r"</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</dd>", facts), facts[:60]
