"""Augment stage: only the training split, deterministic for a seed, and a rerun writes nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfd import augment, data
from dfd.storage import open_store


def _split(tiny_data: Path):
    result = data.validate(open_store(tiny_data), max_pixels=10**7, max_bytes=10**7, min_per_class=5)
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=3)
    return result.items


def test_augments_training_split_only_and_is_idempotent(tiny_data: Path, tmp_path: Path):
    items = _split(tiny_data)
    params = augment.AugmentParams(per_image=2, seed=1)
    out = open_store(tmp_path / "synthetic")
    synthetic, written = augment.augment_training_split(items, open_store(tiny_data), out, params, 10**7)
    n_train = sum(it.split == "train" for it in items)
    assert written == len(synthetic) == 2 * n_train
    files = sorted(o.key for o in out.list())
    assert len(files) == 2 * n_train
    assert {f.split("/")[0] for f in files} == {"real", "df"}
    train_shas = {it.sha256[:16] for it in items if it.split == "train"}
    held_out = {it.sha256[:16] for it in items if it.split != "train"}
    used = {f.split("/")[1].split("-")[0] for f in files}
    assert used == train_shas and not used & held_out
    mtimes = {o.key: o.mtime for o in out.list()}
    again, written_again = augment.augment_training_split(items, open_store(tiny_data), out, params, 10**7)
    assert written_again == 0
    assert [s.key for s in again] == [s.key for s in synthetic]
    assert {o.key: o.mtime for o in out.list()} == mtimes


def test_deterministic_for_a_seed_and_changes_with_it(tiny_data: Path, tmp_path: Path):
    items = _split(tiny_data)
    src = open_store(tiny_data)
    a, b, c = (open_store(tmp_path / n) for n in "abc")
    augment.augment_training_split(items, src, a, augment.AugmentParams(seed=1), 10**7)
    augment.augment_training_split(items, src, b, augment.AugmentParams(seed=1), 10**7)
    augment.augment_training_split(items, src, c, augment.AugmentParams(seed=2), 10**7)
    ka = [o.key for o in a.list()]
    assert ka == [o.key for o in b.list()]
    assert all(a.read_bytes(k) == b.read_bytes(k) for k in ka)
    assert not set(ka) & {o.key for o in c.list()}


def test_augment_pixels_changes_geometry_but_keeps_shape():
    rng = np.random.default_rng(0)
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = 255
    out = augment.augment_pixels(img, rng, augment.AugmentParams(rotation=20, shift=0.1, zoom=0.2, flip=True))
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)
