"""Detection-quality options (all off by default): robustness augmentation, synthetic fakes from reals,
face-aware views, and the efficientnet-b0 architecture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfd import data, faces, robust, synthfake
from dfd.demo import synthetic_photo
from dfd.model import build_model, input_spec_for
from dfd.preprocess import eval_views, make_spec, train_view
from dfd.settings import Settings, SettingsError
from dfd.storage import open_store


def _photo(seed: int = 0, size: int = 64) -> np.ndarray:
    return synthetic_photo(np.random.default_rng(seed), size)


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.asarray(Image.open(fh).convert("RGB"))


# --- settings ---------------------------------------------------------------------------------------------

def test_new_settings_are_off_by_default_and_read_from_env():
    s = Settings.from_env({})
    assert (s.robust_aug, s.synthetic_fakes, s.face_crop, s.weights_path) == (0.0, 0.0, False, "")
    s = Settings.from_env({"DFD_ROBUST_AUG": "0.3", "DFD_SYNTHETIC_FAKES": "0.5", "DFD_FACE_CROP": "yes"})
    assert (s.robust_aug, s.synthetic_fakes, s.face_crop) == (0.3, 0.5, True)
    with pytest.raises(SettingsError, match="robust_aug"):
        Settings.from_env({"DFD_ROBUST_AUG": "1.5"})
    with pytest.raises(SettingsError, match="synthetic_fakes"):
        Settings.from_env({}, synthetic_fakes=-0.1)


# --- robustness augmentation ------------------------------------------------------------------------------

def test_robust_view_off_is_the_plain_training_view():
    img, spec = _photo(1, 80), make_spec("crop", 32, 5)
    a = robust.robust_train_view(img, spec, np.random.default_rng(7), 0.0)
    b = train_view(img, spec, np.random.default_rng(7))
    assert np.array_equal(a, b)


def test_robust_view_degrades_deterministically_per_sample_seed():
    img, spec = _photo(2, 80), make_spec("crop", 32, 1)
    a = robust.robust_train_view(img, spec, np.random.default_rng(3), 1.0)
    b = robust.robust_train_view(img, spec, np.random.default_rng(3), 1.0)
    c = robust.robust_train_view(img, spec, np.random.default_rng(4), 1.0)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    plain = train_view(img, spec, np.random.default_rng(3))
    assert not np.array_equal(a, plain)


def test_scale_augmentation_only_shrinks_before_the_crop(monkeypatch: pytest.MonkeyPatch):
    """With scale_p alone, a view is the plain view of a down-scaled image: no colour, blur or JPEG change, and a
    factor drawn from [scale_min, 1]."""
    img, spec = _photo(5, 96), make_spec("crop", 32, 1)
    factors: list[float] = []
    real_downscale = robust.downscale
    monkeypatch.setattr(robust, "downscale", lambda px, f: factors.append(f) or real_downscale(px, f))
    views = [robust.robust_train_view(img, spec, np.random.default_rng(s), 0.0, scale_p=1.0, scale_min=0.4)
             for s in range(40)]
    assert len(factors) == 40 and all(0.4 <= f <= 1.0 for f in factors) and min(factors) < 0.5
    for s, view in enumerate(views):  # the same draws, replayed: shrink, then the plain training view
        rng = np.random.default_rng(s)
        rng.random()
        shrunk = real_downscale(img, rng.uniform(0.4, 1.0))
        assert np.array_equal(view, train_view(shrunk, spec, rng))
    assert robust.robust_train_view(img, spec, np.random.default_rng(1), 0.0, scale_p=0.0).shape == (32, 32, 3)


def test_each_degradation_does_what_it_says():
    img = _photo(3, 64)
    assert robust.downscale(img, 0.5).shape == (32, 32, 3)
    assert robust.downscale(img, 1.0) is img
    hf = lambda x: np.abs(np.diff(x.astype(float), axis=1)).mean()  # noqa: E731 - high-frequency energy
    assert hf(robust.blur(img, 1.5)) < hf(img)
    low, high = robust.jpeg(img, 30), robust.jpeg(img, 100)
    err = lambda x: np.abs(x.astype(float) - img).mean()  # noqa: E731
    assert err(low) > err(high) and low.shape == img.shape
    jit = robust.colour_jitter(img, np.random.default_rng(0))
    assert jit.shape == img.shape and not np.array_equal(jit, img)


# --- synthetic fakes from reals ---------------------------------------------------------------------------

def _split(root: Path) -> list[data.Item]:
    result = data.validate(open_store(root), max_pixels=10**7, max_bytes=10**7, min_per_class=5)
    data.assign_splits(result, near_distance=4, val_fraction=0.2, test_fraction=0.2, seed=3)
    return result.items


def test_self_blend_changes_a_soft_region_and_keeps_shape():
    img = _photo(5, 64)
    out = synthfake.self_blend(img, np.random.default_rng(0))
    assert out.shape == img.shape and out.dtype == np.uint8
    diff = np.abs(out.astype(int) - img).sum(axis=2)
    assert diff.max() > 0
    # the blend is local: the corners (outside the ellipse) are (nearly) untouched
    assert diff[:4, :4].mean() < diff.max() / 4
    fake = synthfake.synthetic_fake(img, np.random.default_rng(1))
    assert fake.shape == img.shape and not np.array_equal(fake, img)


def test_synthetic_fakes_use_training_reals_only_deterministic_and_idempotent(tiny_data: Path, tmp_path: Path):
    items = _split(tiny_data)
    src, out = open_store(tiny_data), open_store(tmp_path / "synthetic")
    made, written = synthfake.synthesize_fakes(items, src, out, 0.5, seed=1, max_pixels=10**7)
    train_reals = [it for it in items if it.split == "train" and it.y == 0]
    fakes = [f for f in made if f.y == 1]
    twins = [f for f in made if f.y == 0]
    assert written == len(made) == 2 * len(fakes) == 2 * len(twins) == 2 * round(0.5 * len(train_reals)) > 0
    assert all(f.split == "train" for f in made)
    assert all(f.key.startswith("df/synth-") for f in fakes) and all(t.key.startswith("real/twin-") for t in twins)
    files = sorted(o.key for o in out.list())
    assert files == sorted(f.key for f in made)
    used = {k.split("-")[1] for k in files}
    assert used <= {it.sha256[:16] for it in train_reals}
    # Each twin stands in for its real; the other reals stay.
    kept = synthfake.without_twinned(items, made)
    assert len(kept) == len(items) - len(twins) and not {it.sha256[:16] for it in kept} & used
    mtimes = {o.key: o.mtime for o in out.list()}
    again, written_again = synthfake.synthesize_fakes(items, src, out, 0.5, seed=1, max_pixels=10**7)
    assert written_again == 0 and [f.key for f in again] == [f.key for f in made]
    assert {o.key: o.mtime for o in out.list()} == mtimes
    other = open_store(tmp_path / "other")
    synthfake.synthesize_fakes(items, src, other, 0.5, seed=1, max_pixels=10**7)
    assert all(other.read_bytes(k) == out.read_bytes(k) for k in files)
    assert synthfake.synthesize_fakes(items, src, other, 0.0, seed=1, max_pixels=10**7) == ([], 0)


def test_split_entries_let_twins_stand_in_for_their_reals(tiny_data: Path, tmp_path: Path):
    from dfd.train import split_entries

    items = _split(tiny_data)
    made, _ = synthfake.synthesize_fakes(items, open_store(tiny_data), open_store(tmp_path / "s"), 0.5, seed=1,
                                         max_pixels=10**7)
    twinned = {f.key.split("-")[1] for f in made}
    train = split_entries(items, made, "train")
    keys = {e.key for e in train}
    assert {f.key for f in made} <= keys and all(e.store == 1 for e in train if e.key in {f.key for f in made})
    own = [e for e in train if e.store == 0]
    assert own and not {it.sha256[:16] for it in items if it.key in {e.key for e in own}} & twinned
    assert len(train) == sum(it.split == "train" for it in items) + len(made) // 2
    val = split_entries(items, made, "val")  # synthetic images are training-only here
    assert [e.key for e in val] == [it.key for it in items if it.split == "val"]


def test_twin_and_fake_share_their_compression_and_differ_only_by_the_manipulation(tmp_path: Path):
    """A JPEG real's twin and fake are both JPEGs with the real's tables; the twin's pixels are the real's,
    re-encoded once more, like the fake's (so compression cannot separate the pair)."""
    import io

    from helpers import make_dataset

    root = make_dataset(tmp_path / "jpeg-data", per_class=12, size=48, fmt="JPEG")
    items = _split(root)
    store = open_store(tmp_path / "synthetic")
    made, _ = synthfake.synthesize_fakes(items, open_store(root), store, 1.0, seed=1, max_pixels=10**7)
    twin = next(f for f in made if f.y == 0)
    real = next(it for it in items if it.sha256[:16] == twin.key.split("-")[1])
    with Image.open(root / real.key) as a, Image.open(io.BytesIO(store.read_bytes(twin.key))) as b:
        assert b.format == "JPEG" and b.quantization == a.quantization
        diff = np.abs(np.asarray(a.convert("RGB"), np.int16) - np.asarray(b.convert("RGB"), np.int16))
        assert 0 < diff.mean() < 3  # one more round of the same compression: close, not identical


def test_synthetic_fakes_are_encoded_like_their_source(tmp_path: Path):
    """A JPEG real gives a JPEG fake with the same quantisation tables (else the file format would give the
    label away); a PNG real gives a PNG fake."""
    import io

    from helpers import make_dataset

    from dfd.imageio import encode_like

    photo = _photo(3, 64)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=61)
    with Image.open(io.BytesIO(buf.getvalue())) as src:
        tables = src.quantization
    with Image.open(io.BytesIO(encode_like(photo, buf.getvalue()))) as out:
        assert out.format == "JPEG" and out.quantization == tables
    png = io.BytesIO()
    Image.fromarray(photo).save(png, format="PNG")
    with Image.open(io.BytesIO(encode_like(photo, png.getvalue()))) as out:
        assert out.format == "PNG" and np.array_equal(np.asarray(out), photo)
    assert Image.open(io.BytesIO(encode_like(photo, b"not an image"))).format == "PNG"

    root = make_dataset(tmp_path / "jpeg-data", per_class=12, size=48, fmt="JPEG")
    items = _split(root)
    out_store = open_store(tmp_path / "synthetic")
    fakes, _ = synthfake.synthesize_fakes(items, open_store(root), out_store, 1.0, seed=1, max_pixels=10**7)
    assert fakes and all(f.key.endswith(".jpg") for f in fakes)
    for f in fakes:
        with Image.open(io.BytesIO(out_store.read_bytes(f.key))) as img:
            assert img.format == "JPEG"


# --- face-aware views -------------------------------------------------------------------------------------

def test_face_crop_flag_flows_from_spec_to_views():
    assert "face_crop" not in input_spec_for("patchnet", 32)
    spec = input_spec_for("patchnet", 32, 1, face_crop=True)
    assert spec["face_crop"] is True
    assert input_spec_for("seed-cnn", 32, face_crop=True)["face_crop"] is True
    img = _grace_hopper()
    box = faces.face_box(img)
    assert box is not None
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    assert 0 < (x1 - x0) * (y1 - y0) < 0.6 * h * w  # a crop happened, smaller than the photo
    face = img[y0:y1, x0:x1]
    big = make_spec("crop", 64, 1)
    with_face = eval_views(img, {**big, "face_crop": True})
    assert np.array_equal(with_face[0], eval_views(face, big)[0])
    assert not np.array_equal(with_face[0], eval_views(img, big)[0])
    view = train_view(img, {**big, "face_crop": True}, np.random.default_rng(0))
    assert view.shape == (64, 64, 3)


def test_face_crop_falls_back_to_the_whole_image():
    img = _photo(9, 96)
    assert faces.detect_faces(img) == []
    assert faces.crop_face(img) is img
    spec = make_spec("crop", 32, 5)
    assert np.array_equal(eval_views(img, {**spec, "face_crop": True}), eval_views(img, spec))


# --- efficientnet-b0 --------------------------------------------------------------------------------------

def test_efficientnet_b0_builds_and_runs_without_downloads():
    model = build_model("efficientnet-b0", 32)
    assert model.input_shape == (None, 32, 32, 3)
    out = np.asarray(model(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)))
    assert out.shape == (2, 1) and np.all((out >= 0) & (out <= 1))
    assert input_spec_for("efficientnet-b0", 64)["mode"] == "crop"


def test_face_detection_leaves_tiny_images_whole():
    for side in (8, 24, 31, 40):
        img = _photo(side, side)
        assert faces.crop_face(img) is img


def test_efficientnet_b0_loads_a_user_weights_file(tmp_path: Path):
    import keras

    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3),
                                                 pooling="avg")
    marked = [w + 0.01 if w.dtype.kind == "f" else w for w in backbone.get_weights()]
    backbone.set_weights(marked)
    path = tmp_path / "b0_notop.weights.h5"
    backbone.save_weights(path)
    model = build_model("efficientnet-b0", 32, weights_path=str(path))
    loaded = next(layer for layer in model.layers if layer.name.startswith("efficientnet"))
    assert all(np.allclose(a, b) for a, b in zip(loaded.get_weights(), marked, strict=True))
