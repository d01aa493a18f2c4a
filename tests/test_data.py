"""Data stage: discovery, quarantine, duplicate grouping, split and clear errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from helpers import make_dataset, png_bytes

from dfd import data
from dfd.demo import synthetic_photo
from dfd.storage import open_store

KW = dict(max_pixels=10_000_000, max_bytes=10_000_000, min_per_class=5)


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_validate_quarantines_bad_files_and_never_touches_inputs(tiny_data: Path):
    (tiny_data / "real" / "empty.jpg").write_bytes(b"")
    (tiny_data / "df" / "text.JPG").write_text("not an image")
    good = (tiny_data / "real" / "real_000.png").read_bytes()
    (tiny_data / "df" / "cut.png").write_bytes(good[: len(good) // 3])
    (tiny_data / "df" / "notes.txt").write_text("ignored extension")
    before = _digest_tree(tiny_data)
    result = data.validate(open_store(tiny_data), **KW)
    reasons = {q.key: q.reason for q in result.quarantine}
    assert reasons["real/empty.jpg"] == "zero bytes"
    assert reasons["df/text.JPG"] == "not an image"
    assert reasons["df/cut.png"] == "truncated"
    assert reasons["df/notes.txt"] == "not an image"
    assert len(result.items) == 24
    assert _digest_tree(tiny_data) == before


def test_missing_folder_and_missing_class(tmp_path: Path):
    with pytest.raises(data.DataError, match="not found or empty"):
        data.validate(open_store(tmp_path / "nope"), **KW)
    (tmp_path / "only" / "real").mkdir(parents=True)
    (tmp_path / "only" / "real" / "a.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(data.DataError, match="no df/ folder"):
        data.validate(open_store(tmp_path / "only"), **KW)


def test_empty_class(tiny_data: Path):
    for p in (tiny_data / "df").iterdir():
        p.unlink()
    with pytest.raises(data.DataError, match="class 'df' .* is empty"):
        data.validate(open_store(tiny_data), **KW)


def test_reals_only_data_is_accepted_when_fakes_will_be_synthesised(tiny_data: Path):
    """With synthetic fakes on, an empty or missing df/ is fine: the split then holds reals only."""
    for p in (tiny_data / "df").iterdir():
        p.unlink()
    with pytest.raises(data.DataError, match="or set synthetic_fakes > 0"):
        data.validate(open_store(tiny_data), **KW)
    (tiny_data / "df").rmdir()
    result = data.validate(open_store(tiny_data), **KW, fakes_optional=True)
    assert result.items and {it.label for it in result.items} == {"real"}
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert {it.split for it in result.items} == set(data.SPLITS)


def test_all_files_corrupt_names_the_reasons(tiny_data: Path):
    for p in (tiny_data / "df").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(data.DataError) as err:
        data.validate(open_store(tiny_data), **KW)
    msg = str(err.value)
    assert "only 0 usable images" in msg and "at least 5 per class" in msg and "12 not an image" in msg


def test_too_few_images_says_found_and_needed(tiny_data: Path):
    with pytest.raises(data.DataError, match=r"only 12 usable images; at least 50 per class are needed \(found 12"):
        data.validate(open_store(tiny_data), **{**KW, "min_per_class": 50})


def test_duplicate_across_classes_is_set_aside(tiny_data: Path):
    (tiny_data / "df" / "copy.png").write_bytes((tiny_data / "real" / "real_003.png").read_bytes())
    (tiny_data / "real" / "again.png").write_bytes((tiny_data / "real" / "real_004.png").read_bytes())
    result = data.validate(open_store(tiny_data), **KW)
    reasons = {q.key: q.reason for q in result.quarantine}
    assert reasons["df/copy.png"] == reasons["real/real_003.png"] == "conflicting labels"
    assert reasons["real/real_004.png"] == "duplicate" or reasons["real/again.png"] == "duplicate"
    assert all(it.key not in ("df/copy.png", "real/real_003.png") for it in result.items)


def test_near_duplicates_stay_in_one_split(tmp_path: Path):
    root = make_dataset(tmp_path / "d", per_class=30, size=48)
    rng = np.random.default_rng(5)
    base = synthetic_photo(rng, 48)
    for i in range(6):  # six re-encodings / slight brightness changes of one photo, in both classes
        variant = np.clip(base.astype(int) + i, 0, 255).astype(np.uint8)
        (root / ("real" if i % 2 else "df") / f"near_{i}.jpg").write_bytes(png_bytes(variant, "JPEG", quality=90 - i))
    result = data.validate(open_store(root), **KW)
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=1)
    near = [it for it in result.items if it.key.split("/")[1].startswith("near_")]
    assert len(near) == 6
    assert len({it.group for it in near}) == 1
    assert len({it.split for it in near}) == 1


def test_split_is_stratified_and_deterministic(tmp_path: Path):
    root = make_dataset(tmp_path / "d", per_class=40, size=32)
    runs = []
    for _ in range(2):
        result = data.validate(open_store(root), **KW)
        data.assign_splits(result, near_distance=4, val_fraction=0.15, test_fraction=0.15, seed=7)
        runs.append({it.key: it.split for it in result.items})
    assert runs[0] == runs[1]
    counts = result.counts()
    for split in ("val", "test"):
        assert 4 <= counts[split]["real"] <= 8 and 4 <= counts[split]["deepfake"] <= 8
    assert counts["train"]["real"] + counts["val"]["real"] + counts["test"]["real"] == 40


def test_fingerprint_ignores_names_but_not_content(tiny_data: Path):
    store = open_store(tiny_data)
    fp1 = data.fingerprint(data.validate(store, **KW).items)
    (tiny_data / "real" / "real_000.png").rename(tiny_data / "real" / "renamed.png")
    fp2 = data.fingerprint(data.validate(store, **KW).items)
    (tiny_data / "real" / "extra.png").write_bytes(png_bytes(synthetic_photo(np.random.default_rng(99), 48)))
    fp3 = data.fingerprint(data.validate(store, **KW).items)
    assert fp1 == fp2 != fp3


def test_manifest_round_trip(tiny_data: Path, tmp_path: Path):
    result = data.validate(open_store(tiny_data), **KW)
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=1)
    data.write_manifest(result.items, tmp_path / "m.csv")
    back = data.read_manifest(tmp_path / "m.csv")
    assert [(b.key, b.split, b.phash, b.sha256) for b in back] == [
        (i.key, i.split, i.phash, i.sha256) for i in result.items]
