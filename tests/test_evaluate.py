"""Evaluation rules and metrics on hand-checked numbers."""

from __future__ import annotations

import numpy as np

from dfd import evaluate


def test_threshold_maximises_balanced_accuracy():
    y = np.array([0, 0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    t = evaluate.choose_threshold(y, s)
    assert 0.7 < t <= 0.8
    assert evaluate.at_threshold(y, s, t)["balanced_accuracy"] == 1.0


def test_metrics_on_known_values():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.6, 0.4, 0.9])
    m = evaluate.metrics(y, s, 0.5)
    assert m["roc_auc"] == 0.75
    assert m["at_threshold"]["confusion_matrix"] == [[1, 1], [1, 1]]
    assert m["at_threshold"]["per_class_accuracy"] == {"real": 0.5, "deepfake": 0.5}
    assert m["eer"] == 0.5
    assert m["n_real"] == 2 and m["n_deepfake"] == 2


def test_temperature_fixes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    true_p = np.where(y == 1, 0.7, 0.3)  # the model is right 70% of the time ...
    y = (rng.random(4000) < true_p).astype(int)
    overconfident = np.where(true_p > 0.5, 0.99, 0.01)  # ... but claims 99%
    t = evaluate.fit_temperature(y, overconfident)
    calibrated = evaluate.apply_temperature(overconfident, t)
    assert t > 2
    assert evaluate.expected_calibration_error(y, calibrated) < 0.03 < evaluate.expected_calibration_error(
        y, overconfident)


def test_auc_interval_is_a_point_for_a_constant_model_and_tight_for_a_strong_one():
    y = np.r_[np.zeros(100), np.ones(100)]
    assert evaluate.auc_interval(y, np.full(200, 0.3)) == (0.5, 0.5)
    s = y + np.random.default_rng(0).normal(0, 0.5, 200)
    low, high = evaluate.auc_interval(y, s)
    assert low < evaluate.auc(y, s) < high
    assert low > 0.8 and high - low < 0.15


def test_auc_interval_resamples_groups_not_images():
    """12 'videos' of 50 near-identical frames each: per image the evidence looks overwhelming, per video it
    is 12 draws, and the interval must say so."""
    rng = np.random.default_rng(3)
    video_label = np.array([0, 1] * 6)
    video_score = rng.random(12)
    groups = np.repeat(np.arange(12), 50)
    y = video_label[groups]
    s = video_score[groups] + rng.normal(0, 1e-3, 600)
    per_image = evaluate.auc_interval(y, s)
    per_video = evaluate.auc_interval(y, s, groups)
    assert (per_video[1] - per_video[0]) > 3 * (per_image[1] - per_image[0])
    assert per_video[0] < 0.5 < per_video[1]  # 12 videos cannot show that a coin-flip scorer beats chance


def test_auc_interval_of_one_class_is_undefined():
    low, high = evaluate.auc_interval(np.zeros(5), np.arange(5.0))
    assert np.isnan(low) and np.isnan(high)


def test_split_interval_counts_ungrouped_entries_as_their_own_groups():
    from dfd.train import Entry

    entries = [Entry(0, f"k{i}", i % 2, group=7 if i < 4 else -1) for i in range(10)]
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.45, 0.55])
    iv = evaluate.split_auc_interval(entries, scores)
    assert iv["groups"] == 1 + 6 and iv["auc"] == 1.0
    assert iv["low"] <= iv["auc"] <= iv["high"]


def test_assess_calibrates_on_validation_and_judges_the_floor_on_both_splits():
    from dfd.train import Entry

    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(60), np.ones(60)].astype(int)
    entries = [Entry(0, f"k{i}", int(v)) for i, v in enumerate(y)]
    good = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.1, 120), 0.01, 0.99)
    a = evaluate.assess(entries, good, entries, good, seed=0, min_auc=0.55)
    assert a.quality_floor["passed"] and set(a.quality_floor["splits"]) == {"validation", "test"}
    assert a.threshold == evaluate.choose_threshold(y, evaluate.apply_temperature(good, a.temperature))
    np.testing.assert_allclose(a.test_scores, evaluate.apply_temperature(good, a.temperature))
    assert a.test["roc_auc"] == a.validation["roc_auc"] > 0.9
    diverged = np.full(120, np.nan)  # a diverged model: NaN scores count as 0.5 and fail the floor
    dud = evaluate.assess(entries, diverged, entries, diverged, seed=0, min_auc=0.55)
    assert not dud.quality_floor["passed"] and dud.test["roc_auc"] == 0.5


def test_compare_views_advises_more_views_only_when_they_pay_for_themselves():
    y = np.r_[np.zeros(50), np.ones(50)].astype(int)
    rng = np.random.default_rng(0)
    weak = 0.5 + 0.1 * (y - 0.5) + rng.normal(0, 0.1, 100)  # the centre view: some signal
    strong = 0.5 + 0.6 * (y - 0.5) + rng.normal(0, 0.1, 100)  # five views: much more
    better = evaluate.compare_views(y, {1: weak, 5: strong}, scored=1)
    assert better["validation_auc"]["5"] - better["validation_auc"]["1"] >= evaluate.VIEWS_MARGIN
    assert "DFD_EVAL_CROPS=5" in better["advice"] and "5x the work" in better["advice"]
    same = evaluate.compare_views(y, {1: strong, 5: strong + 1e-9}, scored=1)  # not worth 5x the work
    assert same["advice"] == "" and same["scored"] == 1
    assert evaluate.compare_views(y, {1: weak, 5: strong}, scored=5)["advice"] == ""  # already scoring the best


def _brightness_model(size: int):
    """A fixed model: the probability of 'deepfake' rises with a view's mean brightness (0.5 for mid-grey)."""
    import keras

    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    out = keras.layers.Dense(1, activation="sigmoid")(x)
    model = keras.Model(inputs, out)
    model.layers[-1].set_weights([np.full((3, 1), 0.02, "float32"), np.array([-0.02 * 128 * 3], "float32")])
    return model


def test_check_views_finds_traces_the_centre_crop_misses(tmp_path):
    """Fakes whose only trace is in a corner: the centre view sees nothing (AUC 0.5), five views see it all,
    so evaluation advises DFD_EVAL_CROPS=5. Small images and models already scoring five views are skipped."""
    from helpers import png_bytes

    from dfd.predict import Predictor
    from dfd.storage import open_store
    from dfd.train import Entry

    store = open_store(str(tmp_path))
    entries = []
    for i in range(20):
        img = np.full((48, 48, 3), 128, np.uint8)
        if i % 2:
            img[:16, :16] = 255  # the trace, outside the centre crop (16..32)
        store.write_bytes(f"v{i}.png", png_bytes(img))
        entries.append(Entry(0, f"v{i}.png", i % 2))
    spec = {"mode": "crop", "size": 16, "crops": 1}
    pred = Predictor(_brightness_model(16), {"input_spec": spec, "threshold": 0.5})
    raw = evaluate.score_entries(pred, entries, [store])
    result = evaluate.check_views(pred, entries, raw, [store], [48] * 20)
    assert result["validation_auc"] == {"1": 0.5, "5": 1.0}
    assert "DFD_EVAL_CROPS=5" in result["advice"]
    assert evaluate.check_views(pred, entries, raw, [store], [18] * 20) is None  # not larger than a crop
    five = Predictor(pred.model, {"input_spec": {**spec, "crops": 5}, "threshold": 0.5})
    assert evaluate.check_views(five, entries, raw, [store], [48] * 20) is None
