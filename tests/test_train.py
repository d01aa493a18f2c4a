"""Training: stall detection and recovery (a deliberately stalled start is detected and restarted)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import make_dataset

from dfd.preprocess import make_spec
from dfd.storage import open_store
from dfd.train import Entry, is_stalled_epoch, train

LN2 = math.log(2)


def test_stalled_epoch_rule():
    assert is_stalled_epoch({"loss": LN2, "val_auc": 0.5})
    assert is_stalled_epoch({"loss": LN2 - 0.001, "val_auc": 0.67})  # near-constant scores: their AUC is noise
    assert is_stalled_epoch({"loss": 3.0e9, "val_auc": 0.5})  # saturated: a constant output, far worse than ln 2
    assert is_stalled_epoch({"loss": float("nan"), "val_auc": 0.0})  # diverged
    assert not is_stalled_epoch({"loss": 0.68, "val_auc": 0.5})  # the loss is moving: it is learning
    assert not is_stalled_epoch({})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    root = make_dataset(tmp_path_factory.mktemp("stall") / "d", per_class=40, size=32)
    store = open_store(root)
    entries = [Entry(0, o.key, int(o.key.startswith("df/"))) for o in store.list()]
    return store, entries


def _train(tiny, work: Path, lines: list[str], **kw):
    store, entries = tiny
    return train(entries, entries[:10] + entries[-10:], [store], arch="patchnet", spec=make_spec("crop", 32, 1),
                 epochs=6, batch_size=8, width=8, patience=100, seed=0, max_pixels=10**7, work_dir=work,
                 log=lines.append, **kw)


@pytest.mark.slow
def test_a_stalled_start_is_detected_and_restarted_at_a_lower_rate(tiny, tmp_path: Path):
    """A learning rate of 10 blows the network up into a constant output within one epoch; the guard sees
    it after 3 epochs, and the second try, at 10 x 1e-3, learns."""
    lines: list[str] = []
    _, history, stats = _train(tiny, tmp_path / "w", lines, learning_rate=10.0, stall_lr_factor=1e-3)
    tries = stats["attempts"]
    assert [t["outcome"] for t in tries] == ["stalled", "trained"], lines
    assert tries[0]["epochs"] == 3 and tries[0]["learning_rate"] == 10.0
    assert tries[1]["seed"] != tries[0]["seed"] and tries[1]["learning_rate"] == pytest.approx(0.01)
    assert any("try 1 stalled" in line for line in lines) and any("try 2/3" in line for line in lines)
    assert stats["no_signal"] is False
    assert max(history["val_auc"]) > 0.6  # the restart learned from the data
    assert stats["epochs_run"] == 6 and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_when_every_try_stalls_training_says_no_signal(tiny, tmp_path: Path):
    lines: list[str] = []
    _, _, stats = _train(tiny, tmp_path / "w", lines, learning_rate=10.0, stall_lr_factor=1.0, max_attempts=2)
    assert [t["outcome"] for t in stats["attempts"]] == ["stalled", "stalled"], lines
    assert stats["no_signal"] is True
    assert any(line.startswith("no signal found") for line in lines)


@pytest.mark.slow
def test_a_resumed_training_skips_tries_already_found_stalled(tiny, tmp_path: Path):
    """The tries file of a killed run is honoured: the rerun goes on with try 2, not try 1 again."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "attempts.json").write_text(json.dumps(
        [{"try": 1, "seed": 0, "learning_rate": 10.0, "epochs": 3, "outcome": "stalled"}]))
    lines: list[str] = []
    _, _, stats = _train(tiny, work, lines, learning_rate=10.0, stall_lr_factor=1e-3)
    assert [t["try"] for t in stats["attempts"]] == [1, 2]
    assert lines[0].startswith("try 2/3"), lines


def test_a_second_training_in_the_same_work_folder_is_refused_at_once(tiny, tmp_path: Path):
    """Two retrains of the same data and settings share one work folder; the second must not tear the first's
    checkpoint and log. The lock is the first's (held here by this test), released when its holder dies."""
    import fcntl
    import os

    from dfd.train import TrainingBusy

    work = tmp_path / "w"
    work.mkdir()
    fd = os.open(work / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(TrainingBusy, match="another training of the same data and settings is running"):
            _train(tiny, work, [], learning_rate=1e-3)
        assert (work / ".lock").exists() and not (work / "history.csv").exists()  # nothing of the first touched
    finally:
        os.close(fd)


def test_a_torn_history_log_is_read_without_its_junk(tmp_path: Path):
    from dfd.train import _read_history

    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,val_auc\n0,0.69,0.5\nepoch,loss,val_auc\n1,0.60,0.7\n0,0.68,0.55\n2,0.5")
    history = _read_history(path)
    assert history == {"loss": [0.68, 0.60], "val_auc": [0.55, 0.7]}  # the torn last row is left out
