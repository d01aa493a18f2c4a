"""bench/quality.py: the report it writes into docs/QUALITY.md, merging re-measured rows, and a tiny real run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _row(auc: float, **extra) -> dict:
    row = {"auc": auc, "auc_jpeg50": auc - 0.01, "auc_half": auc - 0.2, "ap": auc, "acc": auc, "ece": 0.02,
           "epochs": 3, "img_s": 100.0, "train_s": 10.0, "spec": {"mode": "crop", "size": 32, "crops": 1},
           "cross": {}, "command": "cmd-a"}
    return {**row, **extra}


def test_merge_replaces_same_rows_and_keeps_set_then_config_order(quality):
    old = [("b", "default", _row(0.6)), ("a", "seed-cnn", _row(0.5)), ("a", "default", _row(0.9))]
    new = [("a", "default", _row(0.95, command="cmd-b"))]
    merged = quality.merge_rows(old, new, ["a", "b"])
    assert [(n, c) for n, c, _ in merged] == [("a", "default"), ("a", "seed-cnn"), ("b", "default")]
    assert merged[0][2]["auc"] == 0.95 and merged[0][2]["command"] == "cmd-b"


def test_report_keeps_text_outside_the_markers(quality, tmp_path: Path):
    doc = tmp_path / "Q.md"
    doc.write_text(f"# Title\n\nintro\n\n{quality.BEGIN}\nold table\n{quality.END}\n\nhand-written notes\n")
    quality.write_report(doc, "NEW TABLE\n")
    text = doc.read_text()
    assert "old table" not in text and "NEW TABLE" in text
    assert text.startswith("# Title\n\nintro") and text.endswith("hand-written notes\n")
    plain = tmp_path / "plain.md"
    quality.write_report(plain, "ONLY THIS\n")
    assert plain.read_text() == "ONLY THIS\n"


def test_targets_are_checked_and_not_judged_at_chance(quality):
    rows = [("lfw_faceswap_2k", "default", _row(0.99)), ("lfw_faceswap_2k", "seed-cnn", _row(0.5)),
            ("yonsei_rff_256", "default", _row(0.55))]
    text = quality.targets(rows)
    lfw = next(line for line in text.splitlines() if line.startswith("- lfw"))
    assert "AUC 0.990 vs 0.98: met" in lfw and "beats seed-cnn by +0.490 vs 0.10: met" in lfw
    assert "worst robustness drop +0.200 vs 0.05: **not met**" in lfw
    yonsei = next(line for line in text.splitlines() if line.startswith("- yonsei"))
    assert "not meaningful at chance" in yonsei and "**not met**" in yonsei


@pytest.mark.slow
def test_a_tiny_suite_then_a_merge_then_a_render(quality, tmp_path: Path):
    sets = tmp_path / "sets"
    make_dataset(sets / "one", per_class=16, size=32, fmt="JPEG")
    make_dataset(sets / "two", per_class=16, size=32, seed=1)
    doc = tmp_path / "Q.md"
    doc.write_text(f"intro\n{quality.BEGIN}\n{quality.END}\noutro\n")
    common = ["--datasets", str(sets), "--epochs", "1", "--out", str(doc)]
    assert quality.main([*common, "--configs", "default", "seed-cnn"]) == 0
    first = json.loads(doc.with_suffix(".json").read_text())
    assert [(r["set"], r["config"]) for r in first] == [("one", "default"), ("one", "seed-cnn"),
                                                        ("two", "default"), ("two", "seed-cnn")]
    assert all(set(r["row"]["cross"]) == {"one", "two"} - {r["set"]} for r in first)
    assert all(0.0 <= r["row"]["auc"] <= 1.0 for r in first)

    assert quality.main([*common, "--configs", "reals-only", "--train-on", "two", "--merge"]) == 0
    merged = json.loads(doc.with_suffix(".json").read_text())
    assert [(r["set"], r["config"]) for r in merged] == [
        ("one", "default"), ("one", "seed-cnn"), ("two", "default"), ("two", "seed-cnn"), ("two", "reals-only")]
    assert merged[:4] == first  # the rows it did not re-measure are kept as they were
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "| two | reals-only |" in text and "Commands (the rows come from more than one run" in text

    doc.write_text(text.replace("| one | default |", "| one | tampered |"))
    assert quality.main(["--out", str(doc), "--render-only", "--datasets", str(sets)]) == 0
    assert "| one | default |" in doc.read_text() and "tampered" not in doc.read_text()


def test_seeds_are_merged_across_runs_into_mean_and_spread(quality):
    def seeded(seed: int, auc: float, passed: bool = True, low: float = 0.9) -> dict:
        return quality.aggregate({str(seed): _row(auc, seed=seed, floor_passed=passed, test_auc_low=low,
                                                  cross={"b": 0.3})})

    first = quality.merge_rows([], [("a", "default", seeded(42, 0.90)), ("a", "default", seeded(43, 0.94))], ["a"])
    assert len(first) == 1 and first[0][2]["seeds"] == [42, 43]
    later = quality.merge_rows(first, [("a", "default", seeded(44, 0.50, passed=True, low=0.45))], ["a"])
    row = later[0][2]
    assert row["seeds"] == [42, 43, 44]
    assert row["auc"] == pytest.approx((0.90 + 0.94 + 0.50) / 3)
    assert row["sd"]["auc"] == pytest.approx(float(np.std([0.90, 0.94, 0.50], ddof=1)))
    assert row["floor_passes"] == 3 and row["at_chance_promoted"] == 1  # seed 44 passed the floor at chance
    settings = quality.Settings()
    text = quality.render(later + [("b", "default", _row(0.8, cross={"a": 0.5}))], ["a", "b"], settings, "cmd",
                          0.0, 2)
    assert f"| a | default | crop 32 | 3 | {row['auc']:.4f} ± {row['sd']['auc']:.4f} |" in text
    assert "3/3 (**1 at chance**)" in text
    assert "0.3000 *below chance*" in text and "0.5000 *below" not in text
    assert "quality floor passed by 3 of 3 seeds, 1 of them at chance on test: **not met**" in quality.targets(later)
