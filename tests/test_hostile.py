"""The hostile corpus (tests/hostile_corpus.py) through the data stage, batch scoring and the viewer's upload:
every file is scored or listed with a reason, nothing crashes or hangs, and the reasons agree across stages.

Each kind is its own test case (``test_batch_scoring[fifo]``...), so a failure names the kind. The corpus is
built and run through each stage once per module; every run is bounded in time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from helpers import png_bytes, publish_tiny_model
from hostile_corpus import BYTE_LIMIT, IGNORED, KINDS, KINDS_BY_ID, Kind, build, read_kind, upright

from dfd import csvsafe, data
from dfd.demo import synthetic_photo
from dfd.imageio import decode_image, has_image_extension
from dfd.scoring import check_source, error_reason, load_predictor, score_folder
from dfd.storage import open_store

T = TypeVar("T")
STAGE_SECONDS = 240  # generous: the whole corpus takes a few seconds on 2 busy cores
UPLOADS = [k for k in KINDS if k.upload]
READ_ERRORS = ("unreadable", "file too large")  # refused before decoding: retried on every run


def bounded(fn: Callable[[], T], seconds: float, what: str) -> T:
    """Run ``fn`` in a daemon thread and fail (not hang) if it takes longer than ``seconds``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"bounded {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{what} did not finish within {seconds:g} s: it hangs on some input")
    if "error" in box:
        raise box["error"]
    return box["value"]


def shorten(text: str, limit: int = 160) -> str:
    """The one-line form batch scoring gives an error (dfd.scoring.errors.short)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """The corpus as ``data/real/`` (plus a few fakes in ``data/df/``), a tiny champion, and its predictor."""
    root = tmp_path_factory.mktemp("hostile")
    build(root / "data" / "real", root / "outside")
    rng = np.random.default_rng(5)
    (root / "data" / "df").mkdir()
    for i in range(3):
        (root / "data" / "df" / f"fake_{i}.png").write_bytes(png_bytes(synthetic_photo(rng, 48)))
    artifacts = root / "artifacts"
    publish_tiny_model(artifacts)
    predictor, version = load_predictor(open_store(artifacts), None, root / "work")
    return {"root": root, "folder": root / "data" / "real", "artifacts": artifacts, "predictor": predictor,
            "version": version}


def score(world: dict[str, Any], folder: Path | None = None, **kw: Any) -> dict[str, Any]:
    folder = folder or world["folder"]
    return bounded(lambda: score_folder(str(folder), str(world["artifacts"]), world["predictor"], world["version"],
                                        batch_size=8, progress_every=0, max_file_bytes=BYTE_LIMIT, **kw),
                   STAGE_SECONDS, "batch scoring of the hostile corpus")


def jsonl_rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in Path(summary["results"]["jsonl"]).read_text("utf-8").splitlines()]
    by_path = {r["path"]: r for r in rows}
    assert len(by_path) == len(rows), "a file has two rows"
    return by_path


@pytest.fixture(scope="module")
def scored(world) -> dict[str, Any]:
    summary = score(world)
    return {"summary": summary, "rows": jsonl_rows(summary)}


@pytest.fixture(scope="module")
def validated(world) -> dict[str, data.Item | data.Quarantined]:
    """The data stage's verdict per corpus key (``real/`` stripped)."""
    store = open_store(world["root"] / "data")
    result = bounded(lambda: data.validate(store, max_pixels=40_000_000, max_bytes=BYTE_LIMIT, min_per_class=1),
                     STAGE_SECONDS, "the data stage on the hostile corpus")
    out: dict[str, data.Item | data.Quarantined] = {}
    for entry in [*result.items, *result.quarantine]:
        if entry.key.startswith("real/"):
            assert entry.key[5:] not in out, f"{entry.key} listed twice by the data stage"
            out[entry.key[5:]] = entry
    return out


@pytest.fixture(scope="module")
def viewer(world):
    from app import create_app

    app = create_app({"ARTIFACTS_URL": str(world["artifacts"]), "REFRESH_SECONDS": 0, "TESTING": True,
                      "CACHE_DIR": str(world["root"] / "viewer-cache")})
    return app.test_client()


def test_the_corpus_has_every_kind(world):
    assert len(KINDS) >= 30
    for kind in KINDS:
        raw = kind.name if isinstance(kind.name, bytes) else kind.name.encode("utf-8")
        assert os.path.lexists(os.path.join(os.fsencode(world["folder"]), raw)), kind.id
    assert len(os.fsencode(KINDS_BY_ID["name-255-bytes"].name)) == 255


# --- (b) batch scoring --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.id)
def test_batch_scoring(kind: Kind, scored):
    rows = scored["rows"]
    if kind.expect == IGNORED:
        assert kind.key not in rows
        return
    assert kind.key in rows, f"no row for {kind.key!r}"
    row = rows[kind.key]
    if kind.expect is None:
        assert row["error"] == "", row["error"]
        assert row["label"] in ("real", "deepfake") and 0.0 <= row["score"] <= 1.0
        assert len(row["sha256"]) == 64
    else:
        assert error_reason(row["error"]) == kind.expect, row["error"]
        assert row["score"] is None and row["label"] == ""


def test_one_row_per_listed_file_and_none_for_folders(scored):
    expected = {k.key for k in KINDS if k.expect != IGNORED}
    rows = scored["rows"]
    assert set(rows) == expected
    assert "folder.jpg" not in rows and "empty-folder.jpg" not in rows
    summary = scored["summary"]
    errors = sum(1 for k in KINDS if k.expect not in (None, IGNORED))
    assert summary["files"] == len(expected) and summary["errors"] == errors
    assert summary["scored"] == len(expected) - errors and summary["ignored_files"] == 1


def test_every_exif_orientation_gives_the_upright_pixels_and_one_score(world, scored):
    rows = scored["rows"]
    scores = []
    for o in range(1, 9):
        kind = KINDS_BY_ID[f"exif-orientation-{o}"]
        assert np.array_equal(decode_image(read_kind(world["folder"], kind)).pixels, upright()), o
        stored = (30, 40) if o <= 4 else (40, 30)  # width x height as stored, before the orientation
        assert (rows[kind.key]["width"], rows[kind.key]["height"]) == stored, o
        scores.append(rows[kind.key]["score"])
    assert max(scores) - min(scores) <= 1e-6, scores


def test_results_files_parse_back_to_the_exact_names(scored):
    """Newlines, formulas, backslashes and undecodable bytes survive results.csv and results.jsonl."""
    summary, rows = scored["summary"], scored["rows"]
    with open(summary["results"]["csv"], newline="", encoding="utf-8") as fh:
        csv_rows = [csvsafe.restore_row(r) for r in csv.DictReader(fh)]
    assert len(csv_rows) == summary["files"]
    assert {r["path"] for r in csv_rows} == set(rows)
    for r in csv_rows:
        assert r["error"] == rows[r["path"]]["error"]
    raw = Path(summary["results"]["csv"]).read_text("utf-8")
    assert "\n=HYPERLINK" not in raw and "\n-rf" not in raw  # formula cells neutralised on disk


def test_a_rerun_reads_again_only_what_could_not_be_read(world, scored):
    again = score(world)
    assert again["scored_this_run"] == 0
    assert again["checked_this_run"] == sum(1 for k in KINDS if k.expect in READ_ERRORS)
    assert again["errors_by_reason"] == scored["summary"]["errors_by_reason"]
    assert jsonl_rows(again).keys() == scored["rows"].keys()


@pytest.mark.slow
def test_the_score_flow_gives_the_same_rows(prefect_api, world, scored, tmp_path, monkeypatch):
    """The corpus through the ``score-folder`` flow itself (Prefect task, settings from the environment)."""
    from flows.score_batch import score_folder_flow

    monkeypatch.setenv("DFD_MAX_FILE_BYTES", str(BYTE_LIMIT))
    monkeypatch.setenv("DFD_WORK_DIR", str(tmp_path / "work"))
    artifacts = tmp_path / "artifacts"
    publish_tiny_model(artifacts)  # same seed and data: the same model, in a store of its own
    summary = bounded(lambda: score_folder_flow(path=str(world["folder"]), artifacts_url=str(artifacts),
                                                batch_size=8),
                      STAGE_SECONDS, "the score-folder flow on the hostile corpus")
    assert isinstance(summary, dict)
    assert summary["errors_by_reason"] == scored["summary"]["errors_by_reason"]
    rows = jsonl_rows(summary)
    assert {k: r["error"] for k, r in rows.items()} == {k: r["error"] for k, r in scored["rows"].items()}


# --- (a) the data stage -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.id)
def test_data_stage(kind: Kind, validated, scored):
    if kind.expect == IGNORED:
        assert kind.key not in validated
        return
    assert kind.key in validated, f"the data stage neither used nor set aside {kind.key!r}"
    entry = validated[kind.key]
    expect = kind.expect if kind.data_expect is False else kind.data_expect
    if expect is None:
        assert isinstance(entry, data.Item), f"set aside: {entry}"
        return
    assert isinstance(entry, data.Quarantined), "used for training"
    assert entry.reason == expect, f"{entry.reason}: {entry.detail}"
    if kind.data_expect is False and has_image_extension(kind.key):
        # The same file read and decoded by the same code: the same words as batch scoring's row.
        text = f"{entry.reason}: {entry.detail}" if entry.detail else entry.reason
        assert shorten(text) == scored["rows"][kind.key]["error"]


# --- (c) the viewer's upload --------------------------------------------------------------------------------


def upload_name(kind: Kind) -> str:
    """The file name as a browser sends it: CR, LF and '"' percent-encoded (the HTML standard's multipart
    rule; Werkzeug's test client would write them raw and break the part's header), bytes that are not
    UTF-8 as Latin-1 text."""
    raw = kind.name if isinstance(kind.name, bytes) else kind.name.encode("utf-8")
    name = raw.rsplit(b"/", 1)[-1].replace(b"\r", b"%0D").replace(b"\n", b"%0A").replace(b'"', b"%22")
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return name.decode("latin-1")


@pytest.mark.parametrize("kind", UPLOADS, ids=lambda k: k.id)
def test_viewer_upload(kind: Kind, world, scored, viewer):
    body = read_kind(world["folder"], kind)
    row = scored["rows"][kind.key]

    def post(url: str):
        return viewer.post(url, data={"image": (io.BytesIO(body), upload_name(kind))},
                           content_type="multipart/form-data")

    api = bounded(lambda: post("/api/predict?explain=1"), 120, f"/api/predict of {kind.id}")
    page = bounded(lambda: post("/classify"), 120, f"/classify of {kind.id}")
    if kind.expect is None:
        assert api.status_code == 200, api.data[:300]
        assert api.json["score"] == pytest.approx(row["score"], abs=2e-6)  # the batch score, same file
        assert api.json["label"] == row["label"] and api.json["heatmap"].startswith("data:image/jpeg;base64,")
        assert page.status_code == 200 and api.json["verdict"] in page.get_data(as_text=True)
    else:
        assert api.status_code == 400, api.data[:300]
        assert f"({kind.expect})" in api.json["error"], api.json["error"]
        assert page.status_code == 400 and f"({kind.expect})" in page.get_data(as_text=True)


# --- a file that changes between listing and reading -----------------------------------------------------


def test_a_file_replaced_after_listing_is_scored_as_read(world, tmp_path):
    """The listing is taken first (the same hook the command's pre-check uses: ``scan=``), then the file is
    replaced by another image of another size before scoring reads it: its row describes what was read."""
    folder = tmp_path / "changing"
    folder.mkdir()
    rng = np.random.default_rng(11)
    (folder / "steady.png").write_bytes(png_bytes(synthetic_photo(rng, 40)))
    (folder / "swapped.png").write_bytes(png_bytes(synthetic_photo(rng, 40)))
    (folder / "grown.png").write_bytes(png_bytes(synthetic_photo(rng, 40)))
    (folder / "removed.png").write_bytes(png_bytes(synthetic_photo(rng, 40)))
    scan = check_source(open_store(folder))
    new = png_bytes(synthetic_photo(rng, 56))
    (folder / "tmp-new.png").write_bytes(new)
    os.replace(folder / "tmp-new.png", folder / "swapped.png")  # replaced: a new inode, new size
    with open(folder / "grown.png", "ab") as fh:  # grows past the byte limit
        fh.write(b"\0" * 8192)
    (folder / "removed.png").unlink()
    summary = bounded(
        lambda: score_folder(str(folder), str(world["artifacts"]), world["predictor"], world["version"],
                             scan=scan, batch_size=2, progress_every=0, max_file_bytes=8000),
        STAGE_SECONDS, "scoring a folder that changed after listing")
    rows = jsonl_rows(summary)
    assert set(rows) == {"steady.png", "swapped.png", "grown.png", "removed.png"}
    swapped = rows["swapped.png"]
    assert swapped["error"] == "" and swapped["sha256"] == hashlib.sha256(new).hexdigest()
    assert (swapped["width"], swapped["height"]) == (56, 56)
    assert swapped["bytes"] == len(new), "the row's size is the listing's, not the file's that was scored"
    predictor = world["predictor"]
    assert swapped["score"] == pytest.approx(float(predictor.score_views(predictor.views(decode_image(new).pixels))[0]),
                                             abs=2e-6)
    assert error_reason(rows["grown.png"]["error"]) == "file too large", rows["grown.png"]["error"]
    assert rows["removed.png"]["error"] == "unreadable: vanished while being read"

    again = score_folder(str(folder), str(world["artifacts"]), world["predictor"], world["version"],
                         batch_size=2, progress_every=0, max_file_bytes=8000)
    rows = jsonl_rows(again)
    assert set(rows) == {"steady.png", "swapped.png", "grown.png"}  # the removed file is gone from the results
    assert rows["swapped.png"]["sha256"] == swapped["sha256"] and again["scored_this_run"] == 0


def test_a_file_replaced_after_listing_in_the_data_stage(tmp_path, monkeypatch):
    """The same change, between the data stage's listing (``discover``) and its reads."""
    root = tmp_path / "data"
    rng = np.random.default_rng(12)
    for label in ("real", "df"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.png").write_bytes(png_bytes(synthetic_photo(rng, 40)))
    new = png_bytes(synthetic_photo(rng, 56))
    real_discover = data.discover

    def discover_then_change(store, optional=()):
        found = real_discover(store, optional)
        (root / "real" / "tmp.png").write_bytes(new)
        os.replace(root / "real" / "tmp.png", root / "real" / "0.png")
        (root / "real" / "1.png").unlink()
        return found

    monkeypatch.setattr(data, "discover", discover_then_change)
    result = data.validate(open_store(root), max_pixels=40_000_000, max_bytes=BYTE_LIMIT, min_per_class=1)
    items = {it.key: it for it in result.items}
    quarantine = {q.key: q for q in result.quarantine}
    assert items["real/0.png"].sha256 == hashlib.sha256(new).hexdigest() and items["real/0.png"].width == 56
    assert items["real/0.png"].bytes == len(new)
    assert (quarantine["real/1.png"].reason, quarantine["real/1.png"].detail) == (
        "unreadable", "vanished while being read")
