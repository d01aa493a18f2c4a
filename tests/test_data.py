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
    with pytest.raises(data.DataError, match="no df/ folder") as err:  # the same hint as an empty df/
        data.validate(open_store(tmp_path / "only"), **KW)
    assert data.FAKES_HINT in str(err.value) and "--synthetic-fakes" in data.FAKES_HINT


def test_empty_class(tiny_data: Path):
    for p in (tiny_data / "df").iterdir():
        p.unlink()
    with pytest.raises(data.DataError, match="class 'df' .* is empty"):
        data.validate(open_store(tiny_data), **KW)


def test_reals_only_data_is_accepted_when_fakes_will_be_synthesised(tiny_data: Path):
    """With synthetic fakes on, an empty or missing df/ is fine: the split then holds reals only."""
    for p in (tiny_data / "df").iterdir():
        p.unlink()
    with pytest.raises(data.DataError, match="or set synthetic_fakes > 0") as err:
        data.validate(open_store(tiny_data), **KW)
    assert str(err.value).endswith(data.FAKES_HINT)
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


def test_manifest_phash_is_imagehash_phash(tiny_data: Path, tmp_path: Path):
    """The stored hash is the library's pHash of the decoded image (its hex string), 64 bits."""
    import csv

    import imagehash
    from PIL import Image

    result = data.validate(open_store(tiny_data), **KW)
    data.write_manifest(result.items, tmp_path / "m.csv")
    with open(tmp_path / "m.csv", newline="") as f:
        stored = {row["key"]: row["phash"] for row in csv.DictReader(f)}
    for key, hex_hash in stored.items():
        with Image.open(tiny_data / key) as img:
            assert hex_hash == str(imagehash.phash(img.convert("RGB")))
    assert any(it.phash >= 1 << 63 for it in result.items)  # all 64 bits are used (the DC bit is the top one)


def test_near_duplicate_bands_handle_the_top_bit():
    """Hashes with bit 63 set (most of them: it is the DC bit) group like any other (no int64 overflow)."""
    top = 1 << 63
    items = [data.Item(key=f"real/{i}.png", label="real", sha256=str(i), phash=h, width=1, height=1, bytes=1)
             for i, h in enumerate([top | 0b1011, top | 0b1000, top | (0xFFFF << 40), 0b1011])]
    groups = data.group_near_duplicates(items, max_distance=2)
    assert groups[0] == groups[1] == groups[3] != groups[2]  # 1 or 2 bits apart join (#3: only bit 63); 16 do not


def _video_dataset(root: Path, videos_per_class: int = 8, frames: int = 6) -> Path:
    """real/<video>/ and df/<video>/ folders whose frames are distinct photos (a pHash cannot link them), as
    with frames of one video far apart in time."""
    rng = np.random.default_rng(11)
    for label in ("real", "df"):
        for v in range(videos_per_class):
            folder = root / label / f"{label}{v:02d}"
            folder.mkdir(parents=True)
            for f in range(frames):
                (folder / f"frame{f}.png").write_bytes(png_bytes(synthetic_photo(rng, 32)))
    return root


@pytest.mark.parametrize("group_by", ["folder", "regex:^([a-z]+\\d+)/"])
def test_frames_of_one_video_stay_in_one_split(tmp_path: Path, group_by: str):
    root = _video_dataset(tmp_path / "d")
    result = data.validate(open_store(root), **KW)
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=0, group_by=group_by)
    split_of_video: dict[str, set[str]] = {}
    for it in result.items:
        split_of_video.setdefault(it.key.rsplit("/", 1)[0], set()).add(it.split)
    assert len(split_of_video) == 16 and all(len(s) == 1 for s in split_of_video.values()), split_of_video
    assert data.groups_per_split(result.items) == {
        s: len({v for v, splits in split_of_video.items() if s in splits}) for s in data.SPLITS}
    assert sum(data.groups_per_split(result.items).values()) == 16
    assert data.multi_member_groups(result.items) == 16


def test_group_by_none_lets_frames_of_a_video_straddle_splits(tmp_path: Path):
    root = _video_dataset(tmp_path / "d")
    result = data.validate(open_store(root), **KW)
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=0, group_by="none")
    splits = {}
    for it in result.items:
        splits.setdefault(it.key.rsplit("/", 1)[0], set()).add(it.split)
    assert any(len(s) > 1 for s in splits.values())
    assert data.multi_member_groups(result.items) == 0  # distinct photos: no duplicate groups, no singletons


def test_files_directly_in_the_class_folders_have_no_named_group():
    assert data.named_group("real/a.jpg", "folder") == ""
    assert data.named_group("real/vid7/a.jpg", "folder") == "real/vid7"
    assert data.named_group("df/vid7/sub/a.jpg", "folder") == "df/vid7"
    assert data.named_group("df/person12_003.jpg", "regex:^(person\\d+)_") == "person12"
    assert data.named_group("df/other.jpg", "regex:^(person\\d+)_") == ""


def test_too_few_groups_and_a_bad_group_by_get_clear_errors(tmp_path: Path):
    root = _video_dataset(tmp_path / "d", videos_per_class=2)
    result = data.validate(open_store(root), **KW)
    with pytest.raises(data.DataError, match="set group_by to 'none'"):
        data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=0)
    with pytest.raises(data.DataError, match="group_by must be"):
        data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=0, group_by="video")
    with pytest.raises(data.DataError, match="not valid"):
        data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=0, group_by="regex:(")
