"""Model builders, views, and the save/load round trip that scoring relies on."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_dataset, train_tiny_model

from dfd.imageio import decode_image
from dfd.model import build_model, input_spec_for, input_spec_for_data, load_model, save_model
from dfd.predict import Predictor
from dfd.preprocess import choose_crop_size, eval_views, make_spec, train_view
from dfd.settings import Settings


def test_seed_cnn_matches_the_seed_baseline():
    model = build_model("seed-cnn", 64)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 32, 64, 64]
    assert model.input_shape == (None, 64, 64, 3)
    assert input_spec_for("seed-cnn", 128) == {"mode": "resize", "size": 64, "crops": 1}


def test_patchnet_is_fully_convolutional_over_any_crop_size():
    for arch in ("patchnet", "patchnet-v1"):
        for size in (32, 96):
            model = build_model(arch, size, width=8)
            out = model(np.zeros((2, size, size, 3), np.float32))
            assert out.shape == (2, 1)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("nope", 32)


def test_stem_is_the_two_layer_highpass_front_end_as_one_convolution():
    """The stem's one 5x5 convolution on raw pixels computes what its parameters describe: a Laplacian-started
    high-pass residual stacked with the scaled pixels, then a 3x3 stride-2 convolution (interior positions;
    the border differs only by where the zero padding applies)."""
    import tensorflow as tf

    stem = build_model("patchnet", 32, width=8, seed=3).get_layer("stem")
    assert np.array_equal(stem.highpass.numpy()[:, :, 0], [[0, -1, 0], [-1, 4, -1], [0, -1, 0]])
    rng = np.random.default_rng(0)
    stem.highpass.assign(rng.normal(size=stem.highpass.shape).astype("float32"))  # any trained kernel, not
    stem.bias.assign(rng.normal(size=stem.bias.shape).astype("float32"))  # only the symmetric start
    pixels = rng.integers(0, 256, (2, 32, 32, 3)).astype("float32")
    x = pixels / 127.5 - 1
    residual = tf.nn.depthwise_conv2d(x, stem.highpass.numpy()[..., None], [1, 1, 1, 1], "SAME")
    kernel = np.concatenate([stem.pixel_kernel.numpy(), stem.residual_kernel.numpy()], axis=2)
    two_layer = tf.nn.relu(tf.nn.conv2d(tf.concat([x, residual], -1), kernel, 2, "SAME") + stem.bias).numpy()
    one_conv = stem(pixels).numpy()
    assert one_conv.shape == (2, 16, 16, 8)
    np.testing.assert_allclose(one_conv[:, 1:-2, 1:-2], two_layer[:, 1:-2, 1:-2], atol=1e-4)
    assert (two_layer[:, 1:-2, 1:-2] > 0).mean() > 0.2  # the comparison covers active units, not only zeros


def test_patchnet_starts_with_logits_that_vary_across_images(tmp_path):
    """A fresh patchnet's output already differs between images (no vanishing start that pins the loss at
    ln 2 for epochs): its separable convolutions are initialised to keep the signal's variance. With Keras's
    default initialisation the logits varied by ~1e-4 across lfw crops (see ``_patchnet_body``)."""
    images = np.stack([decode_image(p.read_bytes()).pixels[:64, :64]
                       for p in sorted(make_dataset(tmp_path, per_class=8, size=64).rglob("*.png"))])
    for seed in (0, 1, 2):
        p = build_model("patchnet", 64, seed=seed).predict(images.astype(np.float32), verbose=0).ravel()
        logits = np.log(p / (1 - p))
        assert logits.std() > 0.01, (seed, logits.std())


def test_patchnet_pools_early_only_where_the_last_map_keeps_4x4_positions():
    def last_map(size: int) -> tuple:
        return [la for la in build_model("patchnet", size, width=8).layers
                if la.__class__.__name__ == "SeparableConv2D"][-1].output.shape[1:3]

    assert last_map(128) == (8, 8) and last_map(64) == (4, 4)
    assert last_map(32) == (4, 4)  # no early pooling: cifake-size crops keep their positions


def test_views_are_native_resolution_crops():
    img = np.arange(100 * 80 * 3, dtype=np.uint8).reshape(100, 80, 3)
    views = eval_views(img, make_spec("crop", 32, 5))
    assert views.shape == (5, 32, 32, 3)
    assert np.array_equal(views[1], img[:32, :32])  # top-left corner, untouched pixels
    small = eval_views(np.zeros((20, 10, 3), np.uint8), make_spec("crop", 32, 1))
    assert small.shape == (1, 32, 32, 3)  # mirrored, not resized
    for spec in (make_spec("crop", 32, 5), make_spec("resize", 24)):  # cut straight into a buffer, as the scorer does
        out = np.zeros((int(spec["crops"]), int(spec["size"]), int(spec["size"]), 3), np.uint8)
        assert eval_views(img, spec, out=out) is out and np.array_equal(out, eval_views(img, spec))
    with pytest.raises(ValueError):  # a buffer of another shape is refused, not half-filled
        eval_views(img, make_spec("crop", 32, 5), out=np.zeros((1, 32, 32, 3), np.uint8))
    view = train_view(img, make_spec("crop", 32, 5), np.random.default_rng(0))
    assert view.shape == (32, 32, 3)
    assert choose_crop_size([250] * 10, 128) == 128 and choose_crop_size([32] * 10, 128) == 32


def test_default_scores_five_views_of_large_images_and_one_view_is_opt_in(monkeypatch):
    """Five views (centre and corners) of images clearly larger than a crop by default, one of smaller ones;
    DFD_EVAL_CROPS=1 scores the centre crop alone (the fast mode: a fifth of the work, weaker after JPEG)."""
    monkeypatch.delenv("DFD_EVAL_CROPS", raising=False)
    s = Settings.from_env()
    spec = input_spec_for_data("patchnet", [250] * 10, max_crop=s.max_crop_size, eval_crops=s.eval_crops)
    assert spec == {"mode": "crop", "size": 128, "crops": 5}
    assert input_spec_for_data("patchnet", [140] * 10, max_crop=128, eval_crops=s.eval_crops)["crops"] == 1

    monkeypatch.setenv("DFD_EVAL_CROPS", "1")
    one = input_spec_for_data("patchnet", [250] * 10, max_crop=128, eval_crops=Settings.from_env().eval_crops)
    assert one == {"mode": "crop", "size": 128, "crops": 1}
    img = np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)
    assert np.array_equal(eval_views(img, one)[0], img[61:189, 61:189])  # the centre, untouched
    assert np.array_equal(eval_views(img, spec)[0], eval_views(img, one)[0])  # five views start with it


def test_saved_model_reloads_with_identical_scores(tmp_path):
    model, metadata = train_tiny_model(epochs=1)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(4)]
    before = Predictor(model, metadata).score_pixels(images)
    save_model(model, metadata, tmp_path / "m")
    loaded, meta = load_model(tmp_path / "m")
    after = Predictor(loaded, meta).score_pixels(images)
    np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-6)
    assert meta["input_spec"] == metadata["input_spec"]
    with pytest.raises(ValueError, match="metadata is missing"):
        save_model(model, {"threshold": 0.5}, tmp_path / "bad")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nothing")


@pytest.mark.parametrize("arch", ["patchnet", "patchnet-v1", "seed-cnn"])
def test_uint8_views_score_exactly_as_float32_views(arch):
    """The scorer feeds uint8 views into the graph (the cast is the graph's first op): same output, bit for bit."""
    size = 64
    model = build_model(arch, size, seed=3)
    pred = Predictor(model, {"input_spec": make_spec("crop", size, 1), "threshold": 0.5})
    views = np.random.default_rng(4).integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    as_uint8 = pred._forward(views)
    assert np.array_equal(as_uint8, pred._forward(views.astype(np.float32)))
    np.testing.assert_allclose(as_uint8, model.predict(views.astype(np.float32), verbose=0).reshape(-1), rtol=1e-6)
    assert np.unique(as_uint8).size > 1  # a real output, not a constant
    assert {dtype.name for dtype in pred._compiled} == {"uint8", "float32"}  # one traced graph per input dtype


def test_temperature_changes_confidence_not_order():
    model, metadata = train_tiny_model(epochs=1)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    plain = Predictor(model, {**metadata, "temperature": 1.0}).score_pixels(images)
    soft = Predictor(model, {**metadata, "temperature": 3.0}).score_pixels(images)
    assert np.array_equal(np.argsort(plain), np.argsort(soft))
    assert np.all(np.abs(soft - 0.5) <= np.abs(plain - 0.5) + 1e-9)
