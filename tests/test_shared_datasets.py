"""The data stage on the real labelled sets in ../shared/datasets (skipped when they are absent)."""

from __future__ import annotations

from collections import defaultdict

import pytest
from conftest import SHARED_DATASETS

from dfd import data
from dfd.storage import open_store

# Counts from ../shared/datasets/README.md (exact duplicates were removed there).
EXPECTED = {"cifake_2k": (2000, 2000), "lfw_faceswap_2k": (2000, 2000), "yonsei_rff_256": (1081, 960),
            "ffpp_c23_frames": (2023, 2188)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_sets_validate_and_split_without_leaks(name):
    root = SHARED_DATASETS / name
    if not (root / "real").is_dir():
        pytest.skip(f"{root} is absent")
    result = data.validate(open_store(root), max_pixels=40_000_000, max_bytes=64 << 20, min_per_class=10)
    assert result.quarantine == []
    counts = {label: sum(it.label == label for it in result.items) for label in ("real", "df")}
    assert (counts["real"], counts["df"]) == EXPECTED[name]
    data.assign_splits(result, near_distance=4, val_fraction=0.15, test_fraction=0.15, seed=42)
    splits_of_group: dict[int, set[str]] = defaultdict(set)
    for it in result.items:
        splits_of_group[it.group].add(it.split)
    assert all(len(s) == 1 for s in splits_of_group.values())  # no near-duplicate group straddles splits
    splits_of_folder: dict[str, set[str]] = defaultdict(set)
    for it in result.items:
        if it.key.count("/") >= 2:  # ffpp_c23_frames: <class>/<video>/<frame>
            splits_of_folder[it.key.rsplit("/", 1)[0]].add(it.split)
    assert all(len(s) == 1 for s in splits_of_folder.values())  # no video in two splits
    per_split = result.counts()
    for split in ("val", "test"):
        share = sum(per_split[split].values()) / len(result.items)
        assert 0.10 <= share <= 0.20, (split, per_split)
