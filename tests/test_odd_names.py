"""Odd but legal inputs never cost more than their own row: names that are not UTF-8, names that a spreadsheet
would run as formulas, backslashes, very deep folders and special files, in scoring and in training alike."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import make_dataset, png_bytes

from app.catalog import ResultTable, iter_csv, parse_results
from dfd import csvsafe, data
from dfd.demo import synthetic_photo
from dfd.imageio import ImageError, decode_image
from dfd.scoring import check_source, score_folder
from dfd.storage import escape_name, open_store, unescape_name

BAD = b"bad\xff.jpg"  # not UTF-8: os.fsdecode gives 'bad\udcff.jpg'
FORMULA = '=HYPERLINK("http:x","click").jpg'
KW = dict(max_pixels=10_000_000, max_bytes=10_000_000, min_per_class=5)


def jpeg(seed: int, size: int = 40) -> bytes:
    return png_bytes(synthetic_photo(np.random.default_rng(seed), size), "JPEG", quality=90)


def score(folder: Path, champion) -> dict:
    root, predictor, version = champion
    return score_folder(str(folder), str(root), predictor, version, batch_size=4, progress_every=0,
                        flush_seconds=0.0)


def rows_of(summary: dict) -> tuple[dict[str, dict], dict[str, dict], list[dict]]:
    """(results.jsonl rows by path, results.csv rows by path as written, ledger records)."""
    jsonl = [json.loads(line) for line in Path(summary["results"]["jsonl"]).read_text("utf-8").splitlines()]
    raw_csv = list(csv.DictReader(io.StringIO(Path(summary["results"]["csv"]).read_text("utf-8"))))
    folder = Path(summary["results"]["folder"])
    ledger = [json.loads(line) for f in [folder / "ledger.jsonl", *sorted((folder / "ledger").glob("*.jsonl"))]
              if f.exists() for line in f.read_text("utf-8").splitlines() if line.strip()]
    return {r["path"]: r for r in jsonl}, {r["path"]: r for r in raw_csv}, ledger


# --- 1. names that are not UTF-8 ------------------------------------------------------------------------


def test_escape_is_lossless_and_reversible():
    assert escape_name(os.fsdecode(BAD)) == "bad\\xff.jpg"
    assert escape_name("back\\slash.jpg") == "back\\slash.jpg"  # an ordinary backslash is kept as it is
    assert escape_name("literal\\xff.jpg") == "literal\\\\xff.jpg"  # text that reads as an escape is not one
    alphabet = ["\\", "x", "8", "f", "a", "0", "/", "\udcff", "\udc80", "é", "s"]
    rng = random.Random(0)
    seen: dict[str, str] = {}
    for _ in range(20_000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        key = escape_name(name)
        key.encode("utf-8")  # always valid text
        assert unescape_name(key) == name
        assert seen.setdefault(key, name) == name  # two names never share a key


def test_a_name_that_is_not_utf8_is_scored_with_an_escaped_path(tmp_path, champion):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(jpeg(1))
    with open(os.path.join(os.fsencode(folder), BAD), "wb") as fh:  # same content, an undecodable name
        fh.write((folder / "good.jpg").read_bytes())
    summary = score(folder, champion)
    by_path, csv_rows, ledger = rows_of(summary)
    assert set(by_path) == {"good.jpg", "bad\\xff.jpg"} == set(csv_rows)
    bad = by_path["bad\\xff.jpg"]
    assert bad["error"] == "" and bad["score"] == by_path["good.jpg"]["score"]
    assert summary["errors"] == 0 and summary["scored"] == 2
    assert {r["path"] for r in ledger} == {"good.jpg", "bad\\xff.jpg"}
    assert os.fsencode(unescape_name(bad["path"])) == BAD  # the row names the exact file

    again = score(folder, champion)  # the rerun reads the ledger back and re-reads nothing
    assert again["checked_this_run"] == 0 and again["errors"] == 0
    assert rows_of(again)[0]["bad\\xff.jpg"]["score"] == bad["score"]


def test_a_name_that_is_not_utf8_survives_the_data_stage_and_its_manifest(tmp_path):
    root = make_dataset(tmp_path / "data", per_class=8, size=40)
    real = os.fsencode(root / "real")
    with open(os.path.join(real, b"odd\xe9\xff.png"), "wb") as fh:
        fh.write(png_bytes(synthetic_photo(np.random.default_rng(42), 40)))
    store = open_store(root)
    result = data.validate(store, **KW)
    assert "real/odd\\xe9\\xff.png" in {it.key for it in result.items}
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=1, group_by="none")
    data.write_manifest(result.items, tmp_path / "split_manifest.csv")
    back = data.read_manifest(tmp_path / "split_manifest.csv")
    assert [b.key for b in back] == [i.key for i in result.items]
    odd = next(b for b in back if b.key.startswith("real/odd"))
    assert store.read_bytes(odd.key) == Path(os.fsdecode(os.path.join(real, b"odd\xe9\xff.png"))).read_bytes()


# --- 2. CSV formula injection ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'quoted", "'=x", "plain", ""])
def test_csv_cells_are_neutralised_and_restored(value):
    written = csvsafe.cell(value)
    assert not written.startswith(csvsafe.FORMULA_STARTS)
    assert csvsafe.restore(written) == value
    assert csvsafe.cell(0.25) == 0.25 and csvsafe.cell(-3) == -3  # numbers are left alone


def test_formula_names_are_inert_in_results_csv_viewer_download_and_manifests(tmp_path, champion):
    folder = tmp_path / "batch"
    folder.mkdir()
    names = [FORMULA, "@cmd.jpg", "+1.jpg", "-2.jpg", "'quoted.jpg", "plain.jpg"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(jpeg(i))
    summary = score(folder, champion)
    by_path, csv_rows, ledger = rows_of(summary)
    assert set(by_path) == set(names)  # JSON Lines and the ledger keep the names as they are
    assert {r["path"] for r in ledger} == set(names)
    assert set(csv_rows) == {csvsafe.cell(n) for n in names}
    assert csv_rows["'" + FORMULA]["score"] and csv_rows["plain.jpg"]["path"] == "plain.jpg"
    for row in csv_rows.values():
        assert not row["path"].startswith(csvsafe.FORMULA_STARTS)

    # The viewer reads results.csv back to the original names, and its download is neutralised too.
    columns, scores, codes = parse_results(Path(summary["results"]["csv"]).read_bytes(), "csv")
    assert sorted(columns["path"]) == sorted(names)
    table = ResultTable(("k", 0, 0.0), columns, scores, codes)
    download = list(csv.DictReader(io.StringIO("".join(iter_csv(table, np.arange(len(table)))))))
    assert {r["path"] for r in download} == {csvsafe.cell(n) for n in names}
    assert all(not v.startswith(csvsafe.FORMULA_STARTS) for r in download for v in r.values())

    # A training manifest: neutralised on disk, exact keys when read back.
    root = make_dataset(tmp_path / "data", per_class=8, size=40)
    (root / "real" / FORMULA).write_bytes(jpeg(99))
    result = data.validate(open_store(root), **KW)
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=1, group_by="none")
    data.write_manifest(result.items, tmp_path / "m.csv")
    on_disk = [r["key"] for r in csv.DictReader(io.StringIO((tmp_path / "m.csv").read_text("utf-8")))]
    assert "'real/" + FORMULA not in on_disk and "real/" + FORMULA in on_disk  # starts with "real/": inert
    assert [b.key for b in data.read_manifest(tmp_path / "m.csv")] == [i.key for i in result.items]
    formula_item = data.Item(key=FORMULA, label="real", sha256="0" * 64, phash=1, width=1, height=1, bytes=1)
    data.write_manifest([formula_item], tmp_path / "f.csv")
    assert next(csv.DictReader(io.StringIO((tmp_path / "f.csv").read_text("utf-8"))))["key"] == "'" + FORMULA
    assert data.read_manifest(tmp_path / "f.csv")[0].key == FORMULA


# --- 3. backslashes -------------------------------------------------------------------------------------


def test_a_backslash_name_is_scored_and_trained_on(tmp_path, champion):
    folder = tmp_path / "batch"
    folder.mkdir()
    (folder / "back\\slash.jpg").write_bytes(jpeg(5))
    (folder / "plain.jpg").write_bytes(jpeg(6))
    rows = rows_of(score(folder, champion))[0]
    assert rows["back\\slash.jpg"]["error"] == "" and rows["back\\slash.jpg"]["label"] in ("real", "deepfake")

    root = make_dataset(tmp_path / "data", per_class=8, size=40)
    (root / "df" / "back\\slash.png").write_bytes(png_bytes(synthetic_photo(np.random.default_rng(77), 40)))
    result = data.validate(open_store(root), **KW)
    assert "df/back\\slash.png" in {it.key for it in result.items}
    assert not [q for q in result.quarantine if "slash" in q.key]


# --- 4. very deep folders -------------------------------------------------------------------------------


@pytest.fixture
def deep_folder(tmp_path):
    """A batch folder with one image 1,100 folders down (beyond Python's recursion limit)."""
    top = tmp_path / "deep"
    leaf = top
    top.mkdir()
    for _ in range(1100):  # one level at a time: mkdir(parents=True) itself recurses
        leaf = leaf / "d"
        leaf.mkdir()
    (leaf / "img.jpg").write_bytes(jpeg(8))
    (top / "top.jpg").write_bytes(jpeg(9))
    yield top
    (leaf / "img.jpg").unlink()  # removed bottom-up here: a recursive rmtree would fail at this depth
    folder = leaf
    while folder != top:
        folder.rmdir()
        folder = folder.parent


def test_a_folder_1100_levels_deep_is_listed_and_scored(deep_folder, champion):
    deep_key = "/".join(["d"] * 1100) + "/img.jpg"
    scan = check_source(open_store(deep_folder))  # the pre-check of python -m flows.score_batch
    assert [o.key for o in scan.items] == [deep_key, "top.jpg"]
    rows = rows_of(score(deep_folder, champion))[0]
    assert rows[deep_key]["error"] == "" and rows["top.jpg"]["error"] == ""


# --- 5. the same reason everywhere ----------------------------------------------------------------------


def test_a_fifo_gets_the_same_reason_in_training_and_scoring(tmp_path, champion):
    root = make_dataset(tmp_path / "data", per_class=8, size=40)
    os.mkfifo(root / "real" / "fifo.jpg")
    (root / "real" / "empty.jpg").write_bytes(b"")
    quarantine = {q.key: f"{q.reason}: {q.detail}" if q.detail else q.reason
                  for q in data.validate(open_store(root), **KW).quarantine}
    rows = rows_of(score(root / "real", champion))[0]
    assert quarantine["real/fifo.jpg"] == rows["fifo.jpg"]["error"] == "unreadable: not a regular file"
    assert quarantine["real/empty.jpg"] == rows["empty.jpg"]["error"] == "zero bytes"


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""
    raw = png_bytes(np.zeros((1, 1, 3), np.uint8))
    chunk = b"IHDR" + struct.pack(">II", width, height) + raw[24:29]
    return raw[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def test_a_decompression_bomb_error_quotes_the_configured_limit():
    for side in (100_000, 10_000):  # over Pillow's error limit (178 M pixels), and over its warning limit
        with pytest.raises(ImageError) as info:
            decode_image(bomb_png(side, side), max_pixels=40_000_000)
        assert info.value.reason == "too large"
        assert "40,000,000 pixels" in str(info.value) and "178" not in str(info.value)
        assert f"{side * side:,} pixels" in str(info.value)
