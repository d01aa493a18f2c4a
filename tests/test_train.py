"""Training: stall detection and recovery (a deliberately stalled start is detected and restarted), and the
``tf.distribute`` strategy path (MirroredStrategy over two logical CPU devices)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
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
    assert [line for line in lines if line.startswith("try ")][0].startswith("try 2/3"), lines


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


MIRRORED_RUN_TIMEOUT_S = 300  # a fresh Python with TensorFlow, two tiny model builds and one step: ~15 s here

# Logical devices must be configured before TensorFlow initialises its runtime, hence a fresh interpreter.
MIRRORED_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from dfd.model import build_model
from dfd.preprocess import make_spec
from dfd.storage import open_store
from dfd.train import Entry, distribution_strategy, train

root, work, lr = sys.argv[1], sys.argv[2], float(sys.argv[3])
devices = [d.name for d in tf.config.list_logical_devices("CPU")]
store = open_store(root)
entries = [Entry(0, k, int(k.startswith("df/"))) for k in sorted(o.key for o in store.list())]
with distribution_strategy(devices).scope():  # the weights train() starts from (same seed, same strategy)
    before = [w.copy() for w in build_model("patchnet", 32, width=8, learning_rate=lr, seed=0).get_weights()]
lines = []
model, history, stats = train(entries, entries, [store], arch="patchnet", spec=make_spec("crop", 32, 1), epochs=1,
                              batch_size=len(entries), learning_rate=lr, width=8, patience=100, seed=0,
                              max_pixels=10**7, work_dir=work, log=lines.append, stall_epochs=0, devices=devices)
after = model.get_weights()
print(json.dumps({"devices": devices, "n": len(entries), "stats": stats, "history": history, "lines": lines,
                  "max_change": max(float(np.max(np.abs(a - b))) for a, b in zip(after, before, strict=True)),
                  "strategy": type(model.distribute_strategy).__name__}))
"""


@pytest.mark.slow
def test_training_under_a_mirrored_strategy_on_two_cpu_devices_builds_and_trains_one_step(tmp_path: Path):
    """The project's own training, given two logical CPU devices, builds and compiles its model under a
    MirroredStrategy (2 replicas) and takes one step (one global batch of 8, 4 per replica): the loss is finite
    and the weights moved by one Adam step (at most the learning rate each: proves they started where a fresh
    build starts and trained exactly once)."""
    root = make_dataset(tmp_path / "d", per_class=4, size=32)
    lr = 1e-2
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    warnings_are_errors = ["-W", "error", "-W", "ignore::DeprecationWarning"]  # as under pytest (third parties')
    proc = subprocess.run([sys.executable, *warnings_are_errors, "-c", MIRRORED_SCRIPT, str(root), str(tmp_path / "w"),
                           str(lr)], env=env, capture_output=True, text=True, timeout=MIRRORED_RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["devices"]) == 2 and out["n"] == 8
    assert out["strategy"] == "MirroredStrategy"
    assert out["stats"]["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2,
                                            "devices": out["stats"]["distribution"]["devices"]}
    assert len(out["stats"]["distribution"]["devices"]) == 2
    assert any("MirroredStrategy strategy with 2 replica(s)" in line and "global batch 8" in line
               for line in out["lines"]), out["lines"]
    assert out["stats"]["epochs_run"] == 1 and len(out["history"]["loss"]) == 1
    assert math.isfinite(out["history"]["loss"][0])
    assert 0 < out["max_change"] <= lr * 1.01, out["max_change"]


def test_with_fewer_than_two_devices_the_default_strategy_is_used():
    import tensorflow as tf

    from dfd.train import describe_strategy, distribution_strategy

    for devices in ([], ["/cpu:0"]):
        strategy = distribution_strategy(devices)
        assert strategy is tf.distribute.get_strategy()
        assert describe_strategy(strategy) == {"strategy": "default", "replicas": 1, "devices": []}
    if len(tf.config.list_logical_devices("GPU")) < 2:  # this machine: CPU only (or one GPU)
        assert describe_strategy(distribution_strategy()) == {"strategy": "default", "replicas": 1, "devices": []}
