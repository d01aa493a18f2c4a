"""The batch-scoring core: exact scores, results files, ledger idempotency and resume, ids, readiness."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_dataset, png_bytes, publish_tiny_model, train_tiny_model

from dfd.imageio import decode_image
from dfd.inbox import folder_state, inbox_states
from dfd.layout import CAVEATS, SUMMARY_KEYS, TRAIN_ON_REAL_DATA, model_caveat
from dfd.registry import RegistryError, publish_run, set_champion
from dfd.scoring import (
    RESULT_FIELDS,
    ScoreOptions,
    ScoringError,
    Status,
    artifact_key,
    batch_id_for,
    format_summary,
    load_predictor,
    results_prefix,
    score_folder,
)
from dfd.storage import LocalStore, open_store

VERSION5 = "20260102-000000-crops5"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """An artifact store whose champion cuts 5 crops per image (exercises multi-view batching)."""
    from dfd.model import save_model

    root = tmp_path_factory.mktemp("artifacts")
    publish_tiny_model(root, champion=False)  # a second, 1-view version for the "explicit version" test
    model, metadata = train_tiny_model()
    metadata["input_spec"] = {**metadata["input_spec"], "crops": 5}
    metadata["version"] = VERSION5
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, metadata, tmp)
        publish_run(open_store(root), VERSION5, tmp)
    set_champion(open_store(root), VERSION5, reason="test")
    return root


@pytest.fixture(scope="module")
def predictor(artifacts):
    pred, version = load_predictor(open_store(artifacts), None)
    assert version == VERSION5
    return pred


def run(folder: Path, artifacts: Path, predictor, **kw) -> dict:
    kw.setdefault("batch_size", 7)
    kw.setdefault("progress_every", 0.0)
    kw.setdefault("flush_seconds", 0.0)  # a ledger chunk after every batch
    return score_folder(str(folder), str(artifacts), predictor, VERSION5, **kw)


def read_rows(summary: dict) -> tuple[list[dict], list[dict]]:
    csv_rows = list(csv.DictReader(io.StringIO(Path(summary["results"]["csv"]).read_text("utf-8"))))
    jsonl = [json.loads(line) for line in Path(summary["results"]["jsonl"]).read_text("utf-8").splitlines()]
    return csv_rows, jsonl


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_scores_equal_model_predict_and_results_parse(tmp_path, artifacts, predictor):
    folder = make_dataset(tmp_path / "batch", per_class=10, size=40, fmt="JPEG")
    (folder / "nested" / "deeper").mkdir(parents=True)
    (folder / "nested" / "deeper" / "small.png").write_bytes(png_bytes(np.full((20, 24, 3), 90, np.uint8)))
    summary = run(folder, artifacts, predictor)

    csv_rows, jsonl = read_rows(summary)
    expected_paths = files_of(folder)
    assert [r["path"] for r in csv_rows] == expected_paths  # exactly one row per file, sorted
    assert [r["path"] for r in jsonl] == expected_paths
    assert list(csv_rows[0].keys()) == list(RESULT_FIELDS)
    assert all(list(r.keys()) == list(RESULT_FIELDS) for r in jsonl)

    for row, rec in zip(csv_rows, jsonl, strict=True):
        data = (folder / row["path"]).read_bytes()
        views = predictor.views(decode_image(data).pixels)
        p = predictor.model.predict(views.astype("float32"), verbose=0).reshape(-1)
        expected = float(predictor.calibrate(p)[0])
        assert rec["score"] == pytest.approx(expected, abs=2e-6)
        assert rec["score"] == pytest.approx(float(predictor.score_views(views)[0]), abs=2e-6)  # the viewer's path
        assert float(row["score"]) == pytest.approx(expected, abs=2e-6)
        assert rec["label"] == ("deepfake" if expected >= predictor.threshold else "real")
        assert rec["sha256"] == hashlib.sha256(data).hexdigest()
        assert rec["bytes"] == len(data) and int(row["bytes"]) == len(data)
        assert rec["threshold"] == predictor.threshold and rec["model_version"] == VERSION5
        assert rec["error"] == "" and row["error"] == ""
        assert rec["width"] and rec["height"] and rec["scored_at"].endswith("+00:00")
    small = next(r for r in jsonl if r["path"].endswith("small.png"))
    assert (small["width"], small["height"]) == (24, 20)

    stored = json.loads(Path(summary["results"]["summary"]).read_text())
    assert stored == json.loads(json.dumps(summary))
    assert not set(SUMMARY_KEYS) - set(stored), "summary.json lacks keys that readers rely on (dfd.layout)"
    assert summary["files"] == len(expected_paths) == summary["scored"]
    assert summary["counts"]["real"] + summary["counts"]["deepfake"] == len(expected_paths)
    assert summary["errors"] == 0 and summary["scored_this_run"] == len(expected_paths)
    assert summary["results"]["folder"].endswith(f"scores/{summary['batch_id']}")


def test_rerun_scores_nothing_and_rebuilds_identical_results(tmp_path, artifacts, predictor):
    folder = make_dataset(tmp_path / "batch", per_class=6, size=40)
    first = run(folder, artifacts, predictor)
    csv_before = Path(first["results"]["csv"]).read_bytes()
    second = run(folder, artifacts, predictor)
    assert second["scored_this_run"] == 0
    assert second["checked_this_run"] == 0  # not even re-read: path, size and mtime match the ledger
    assert second["reused_this_run"] == first["files"] == 12
    assert Path(second["results"]["csv"]).read_bytes() == csv_before

    # Touching files (same content, new mtime) makes them re-read and re-hashed, but still not rescored.
    for p in folder.rglob("*.png"):
        os.utime(p, (time.time() + 5, time.time() + 5))
    third = run(folder, artifacts, predictor)
    assert third["checked_this_run"] == 12 and third["scored_this_run"] == 0
    assert Path(third["results"]["csv"]).read_bytes() == csv_before


def test_added_changed_removed_and_duplicate_files(tmp_path, artifacts, predictor):
    folder = make_dataset(tmp_path / "batch", per_class=5, size=40)
    first = run(folder, artifacts, predictor)
    assert first["files"] == 10

    rng = np.random.default_rng(7)
    (folder / "new_a.png").write_bytes(png_bytes(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    (folder / "new_b.png").write_bytes(png_bytes(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    changed = folder / "real" / "real_000.png"
    changed.write_bytes(png_bytes(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)))
    (folder / "df" / "df_004.png").unlink()
    shutil.copyfile(folder / "real" / "real_001.png", folder / "copy of real_001.png")  # same content

    second = run(folder, artifacts, predictor)
    assert second["scored_this_run"] == 3  # two new files and one changed; the copy reuses its hash's score
    assert second["files"] == 12
    _, rows = read_rows(second)
    assert [r["path"] for r in rows] == files_of(folder)
    by_path = {r["path"]: r for r in rows}
    assert by_path["copy of real_001.png"]["score"] == by_path["real/real_001.png"]["score"]
    assert by_path["real/real_000.png"]["sha256"] == hashlib.sha256(changed.read_bytes()).hexdigest()


def test_inputs_are_never_modified(tmp_path, artifacts, predictor):
    folder = make_dataset(tmp_path / "batch", per_class=4, size=40)

    def snapshot():
        return {
            p.relative_to(folder).as_posix(): (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime_ns,
                p.stat().st_mode,
            )
            for p in folder.rglob("*")
            if p.is_file()
        }

    before = snapshot()
    run(folder, artifacts, predictor)
    run(folder, artifacts, predictor)
    assert snapshot() == before
    assert sorted(p.name for p in folder.iterdir()) == ["df", "real"]  # nothing written into the input


class Boom(RuntimeError):
    pass


class CrashingPredictor:
    """Delegates to a real predictor but dies after ``n`` inference batches (a crash mid-run)."""

    def __init__(self, inner, n: int):
        self.inner, self.n = inner, n

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score_views(self, views):
        if self.n == 0:
            raise Boom("simulated crash")
        self.n -= 1
        return self.inner.score_views(views)


def test_crash_mid_run_then_rerun_completes_without_duplicates(tmp_path, artifacts, predictor):
    folder = make_dataset(tmp_path / "batch", per_class=15, size=40)
    with pytest.raises(Boom):
        run(folder, artifacts, CrashingPredictor(predictor, 2), batch_size=4)
    prefix = Path(artifacts) / results_prefix(batch_id_for(str(folder)))
    assert not (prefix / "summary.json").exists()
    chunks = list((prefix / "ledger").glob("*.jsonl"))
    assert len(chunks) == 2  # one atomic ledger chunk per finished batch

    summary = run(folder, artifacts, predictor, batch_size=4)
    assert summary["scored_this_run"] == 30 - 8  # the 8 files of the two finished batches were not rescored
    _, rows = read_rows(summary)
    paths = [r["path"] for r in rows]
    assert paths == files_of(folder) and len(set(paths)) == 30
    assert all(r["error"] == "" and r["label"] in ("real", "deepfake") for r in rows)
    assert not list((prefix / "ledger").glob("*.jsonl"))  # compacted
    ledger_lines = (prefix / "ledger.jsonl").read_text().splitlines()
    assert len(ledger_lines) == 30


def test_crash_during_compaction_leaves_a_usable_ledger(tmp_path, artifacts, predictor, monkeypatch):
    folder = make_dataset(tmp_path / "batch", per_class=5, size=40)

    class Killed(BaseException):
        """Like a kill: nothing catches it."""

    def die(self, key):
        raise Killed("simulated kill after ledger.jsonl was written, before the chunks were deleted")

    monkeypatch.setattr(LocalStore, "delete", die)
    with pytest.raises(Killed):
        run(folder, artifacts, predictor, batch_size=3)
    monkeypatch.undo()
    again = run(folder, artifacts, predictor, batch_size=3)
    assert again["scored_this_run"] == 0 and again["files"] == 10
    _, rows = read_rows(again)
    assert [r["path"] for r in rows] == files_of(folder)
    prefix = Path(artifacts) / results_prefix(again["batch_id"])
    assert len((prefix / "ledger.jsonl").read_text().splitlines()) == 10


def test_stream_is_bounded_not_materialised(tmp_path, artifacts, predictor):
    """The pipeline reads ahead only a few batches: it never loads the whole folder first."""
    from dfd.scoring import scan_folder, stream_scores

    folder = tmp_path / "many"
    folder.mkdir()
    img = png_bytes(np.full((36, 36, 3), 128, np.uint8))
    for i in range(300):
        (folder / f"{i:04d}.png").write_bytes(img + i.to_bytes(4, "big"))  # trailing bytes: distinct hashes
    store = open_store(folder)
    reads = []

    class Counting(LocalStore):
        def open_local(self, key):
            reads.append(key)
            return super().open_local(key)

    counting = Counting(folder)
    items = scan_folder(store).items
    gen = stream_scores(counting, items, predictor, 4, lambda sha: False, 1 << 20)
    first = next(gen)
    time.sleep(0.5)  # let the read-ahead fill up
    assert len(first) == 4 and all(o.status == Status.OK and 0 <= o.score <= 1 and o.nbytes > 0 for o in first)
    assert 4 <= len(reads) < 100, f"{len(reads)} files read after the first batch"
    gen.close()


def test_explicit_model_version_and_no_champion(tmp_path, artifacts):
    store = open_store(artifacts)
    pred, version = load_predictor(store, "20260101-000000-tiny00")
    assert version == "20260101-000000-tiny00" and pred.views_per_image == 1
    with pytest.raises(RegistryError, match="unknown or incomplete"):
        load_predictor(store, "nope")
    empty = tmp_path / "empty-artifacts"
    empty.mkdir()
    with pytest.raises(RegistryError, match="no champion"):
        load_predictor(open_store(empty), None)


def test_model_caveat_reads_the_sidecar_then_the_run_record():
    demo = model_caveat({"demo_data": True, "reals_only": False})
    assert demo == {"kind": "demo-data", "message": CAVEATS["demo-data"], "hint": TRAIN_ON_REAL_DATA}
    assert "dfd-retrain --data DIR" in demo["hint"] and "df/" in demo["hint"]
    assert model_caveat({"demo_data": False, "reals_only": True})["kind"] == "synthetic-fakes-only"
    assert model_caveat({"demo_data": False, "reals_only": False}, {"demo_data": True}) is None  # sidecar wins
    assert model_caveat({}, {"demo_data": True, "reals_only": False})["kind"] == "demo-data"  # an older sidecar
    assert model_caveat({"demo_data": False}, {"reals_only": True})["kind"] == "synthetic-fakes-only"
    assert model_caveat({}) is None and model_caveat(None, None) is None  # nothing says otherwise


@pytest.mark.parametrize("flags, run_record, kind", [
    ({"demo_data": True, "reals_only": False}, None, "demo-data"),
    ({}, {"demo_data": False, "reals_only": True}, "synthetic-fakes-only"),  # a sidecar from before the flags
    ({"demo_data": False, "reals_only": False}, {"demo_data": True}, None),  # trained on real labelled data
])
def test_summary_and_closing_lines_say_what_the_verdicts_are_worth(tmp_path, artifacts, flags, run_record, kind):
    """The champion's files published again with ``flags`` in the sidecar (and ``run_record`` as run.json):
    summary.json records the caveat and the command's closing lines end with it, or say nothing of it."""
    version = "20260103-000000-flags0"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(artifacts / "runs" / VERSION5, tmp, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("_COMPLETE"))
        meta = json.loads((Path(tmp) / "metadata.json").read_text())
        (Path(tmp) / "metadata.json").write_text(json.dumps({**meta, **flags}))
        store = open_store(tmp_path / "store")
        publish_run(store, version, tmp)
    if run_record is not None:
        store.write_json(f"runs/{version}/run.json", run_record)
    pred, _ = load_predictor(store, version, tmp_path / "work")
    folder = make_dataset(tmp_path / "batch", per_class=1, size=40)
    summary = score_folder(str(folder), store, pred, version, progress_every=0.0)
    stored = json.loads(Path(summary["results"]["summary"]).read_text())
    assert (stored["model_caveat"] or {}).get("kind") == kind
    closing = format_summary(stored)
    assert closing.startswith(f"batch {stored['batch_id']}: 2 files, 2 scored")
    if kind is None:
        assert stored["model_caveat"] is None and "WARNING" not in closing
    else:
        assert closing.splitlines()[-2:] == [f"  WARNING: {CAVEATS[kind]}", f"           {TRAIN_ON_REAL_DATA}"]


def test_missing_and_empty_folders_are_clear_errors(tmp_path, artifacts, predictor):
    with pytest.raises(ScoringError, match="does not exist"):
        run(tmp_path / "nowhere", artifacts, predictor)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / ".hidden").write_text("x")
    with pytest.raises(ScoringError, match="is empty"):
        run(tmp_path / "empty", artifacts, predictor)
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(ScoringError, match="not a folder"):
        run(tmp_path / "file.jpg", artifacts, predictor)


def test_batch_ids_and_artifact_keys(tmp_path):
    inbox = tmp_path / "inbox"
    (inbox / "batch-2026_01.a").mkdir(parents=True)
    (inbox / "Dröp with space").mkdir()
    assert batch_id_for(str(inbox / "batch-2026_01.a"), str(inbox)) == "batch-2026_01.a"
    other = batch_id_for(str(tmp_path / "elsewhere" / "photos"), str(inbox))
    assert re.fullmatch(r"photos-[0-9a-f]{8}", other)
    assert other == batch_id_for(str(tmp_path / "elsewhere" / "photos") + "/")  # stable
    assert other != batch_id_for(str(tmp_path / "again" / "photos"))  # same name elsewhere: no collision
    unsafe = batch_id_for(str(inbox / "Dröp with space"), str(inbox))
    assert re.fullmatch(r"dr-p-with-space-[0-9a-f]{8}", unsafe)
    for bid in ("batch-2026_01.a", other, unsafe, "UPPER"):
        assert re.fullmatch(r"score-[a-z0-9]+(-[a-z0-9]+)*", artifact_key(bid))
    assert artifact_key("plain-id-1") == "score-plain-id-1"
    assert artifact_key("UPPER") != artifact_key("upper")


def _write(path: Path, mtime: float | None = None, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_ready_marker_rule(tmp_path):
    inbox_dir, art_dir = tmp_path / "inbox", tmp_path / "artifacts"
    art_dir.mkdir()
    now = time.time()
    _write(inbox_dir / "marked" / "a.jpg", now - 5)
    _write(inbox_dir / "marked" / "_READY", now - 1)
    _write(inbox_dir / "copying" / "a.jpg", now - 5)  # recent, no marker: half-copied
    _write(inbox_dir / "quiet" / "sub" / "a.jpg", now - 600)
    _write(inbox_dir / "partial" / "a.jpg", now - 600)
    _write(inbox_dir / "partial" / ".b.jpg.part", now - 2)  # a copier's hidden temp file is a change
    _write(inbox_dir / "late" / "_READY", now - 30)
    _write(inbox_dir / "late" / "a.jpg", now - 2)  # written after the marker
    (inbox_dir / "empty").mkdir()
    _write(inbox_dir / "only-marker" / "_READY", now - 600)
    (inbox_dir / ".hidden-folder").mkdir()

    inbox, art = open_store(inbox_dir), open_store(art_dir)
    states = {s.name: s for s in inbox_states(inbox, art, "_READY", quiet_seconds=60, now=now)}
    assert sorted(states) == ["copying", "empty", "late", "marked", "only-marker", "partial", "quiet"]
    due = sorted(n for n, s in states.items() if s.due)
    assert due == ["marked", "quiet"]
    assert "newer than _READY" in states["late"].reason
    assert "waiting" in states["copying"].reason
    assert not states["empty"].ready and not states["only-marker"].ready

    # Later, with enough quiet time, the late and copying folders become ready too.
    later = {s.name: s for s in inbox_states(inbox, art, "_READY", quiet_seconds=60, now=now + 120)}
    assert sorted(n for n, s in later.items() if s.due) == ["copying", "late", "marked", "partial", "quiet"]
    assert later["marked"].batch_id == "marked"


def test_scored_folder_is_not_due_until_it_changes(tmp_path, artifacts, predictor):
    inbox_dir = tmp_path / "inbox"
    make_dataset(inbox_dir / "b1", per_class=3, size=40)
    (inbox_dir / "b1" / "_READY").write_text("")
    inbox, art = open_store(inbox_dir), open_store(artifacts)
    state = folder_state(inbox, art, "b1")
    assert state.due and state.batch_id == "b1"
    summary = score_folder(state.url, art, predictor, VERSION5, batch_id=state.batch_id, scan=state.scan, batch_size=4)
    assert summary["files"] == 6 and summary["ignored_files"] == 1
    assert not folder_state(inbox, art, "b1").due
    (inbox_dir / "b1" / "more.png").write_bytes(png_bytes(np.zeros((40, 40, 3), np.uint8)))
    os.utime(inbox_dir / "b1" / "_READY")  # the marker is touched after adding files
    state = folder_state(inbox, art, "b1")
    assert state.due and "changed since" in state.reason
    again = score_folder(state.url, art, predictor, VERSION5, ScoreOptions(batch_size=4), batch_id="b1")
    assert again["scored_this_run"] == 1 and again["files"] == 7
