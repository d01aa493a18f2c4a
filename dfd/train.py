"""Train stage: a streaming tf.data pipeline (parallel decode, prefetch), class weights, early stopping on
validation AUC, a checkpoint every epoch so that a killed training resumes where it stopped, and recovery
from a stalled start.

A start is *stalled* when, for each of the first ``stall_epochs`` epochs, the training loss stays pinned at
ln 2 (what a constant output scores with balanced class weights) or above, or is not finite: the network has
collapsed to a constant output. Its validation AUC is then noise (the exact AUC of near-identical scores
wanders between 0.44 and 0.67 on lfw_faceswap_2k), so it is not part of the test. Measured on
lfw_faceswap_2k with scale augmentation, two of three seeds stayed pinned for 8 epochs, and early stopping
would have kept a near-constant model (test AUC 0.68), where the third seed left ln 2 in its third epoch and
reached 0.975. A stalled try is abandoned and training restarts from a new seed at half the learning rate, at
most ``max_attempts`` tries in all; every try is logged and returned in the stats. The last try is never cut
short; when it stays pinned too, the stats say that no signal was found (and the promotion's quality floor
refuses the model).

Training runs under a :func:`distribution_strategy`: ``tf.distribute.MirroredStrategy`` over the visible GPUs
when there are two or more (one replica per GPU, gradients all-reduced across them every step), else TensorFlow's
default strategy (one device: the GPU if there is one, or the CPU, whose cores TensorFlow uses itself).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfd import pipeline
from dfd.imageio import decode_image
from dfd.model import build_model, keras
from dfd.preprocess import InputSpec, center_view
from dfd.robust import robust_train_view
from dfd.storage import Store
from dfd.synthfake import without_twinned

Log = Callable[[str], None]


@dataclass(frozen=True)
class Entry:
    """One training example: which store, which key, which class (1 = deepfake)."""

    store: int
    key: str
    y: int
    group: int = -1  # near-duplicate / video group (for grouped confidence intervals); -1 = unknown


def split_entries(items: Sequence[Any], synthetic: Sequence[Any], split: str) -> list[Entry]:
    """The images of ``split``: the user's ``items`` (store 0) plus the ``synthetic`` ones of that split
    (store 1), where a real's re-encoded twin stands in for it (see :mod:`dfd.synthfake`)."""
    own = [Entry(0, it.key, it.y, it.group) for it in without_twinned(list(items), list(synthetic))
           if it.split == split]
    return own + [Entry(1, it.key, it.y, it.group) for it in synthetic if it.split == split]


def _dataset(entries: Sequence[Entry], stores: Sequence[Store], spec: InputSpec, batch_size: int,
             training: bool, seed: int, max_pixels: int, robust_aug: float = 0.0, scale_aug: float = 0.0,
             scale_min: float = 0.5):
    import tensorflow as tf

    size = int(spec["size"])
    store_idx = np.array([e.store for e in entries], dtype=np.int64)
    keys = np.array([e.key for e in entries])
    ys = np.array([e.y for e in entries], dtype=np.float32)

    def load(i, sample_seed):
        i = int(i)
        pixels = decode_image(stores[store_idx[i]].read_bytes(str(keys[i])), max_pixels).pixels
        if training:
            view = robust_train_view(pixels, spec, np.random.default_rng(int(sample_seed)), robust_aug,
                                     scale_aug, scale_min)
        else:
            view = center_view(pixels, spec)
        return view.astype(np.float32), ys[i]

    def tf_load(i, sample_seed):
        x, y = tf.numpy_function(load, [i, sample_seed], [tf.float32, tf.float32], stateful=False)
        x.set_shape((size, size, 3))
        y.set_shape(())
        return x, y

    ds = tf.data.Dataset.range(len(entries))
    if training:
        ds = ds.shuffle(len(entries), seed=seed, reshuffle_each_iteration=True)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed)))
    ds = ds.map(tf_load, num_parallel_calls=pipeline.cpu_cores(), deterministic=True)
    return pipeline.fixed(ds.batch(batch_size).prefetch(pipeline.PREFETCH_BATCHES))


def distribution_strategy(devices: Sequence[str] | None = None) -> Any:
    """The ``tf.distribute`` strategy to train under: a ``MirroredStrategy`` over ``devices`` when it names two or
    more (by default the visible GPUs, e.g. ``["/gpu:0", "/gpu:1"]``; the tests pass two logical CPUs), else the
    default strategy (one device, no replication). Pass ``devices=[]`` to turn mirroring off."""
    import tensorflow as tf

    if devices is None:
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
    devices = list(devices)
    if len(devices) >= 2:
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def describe_strategy(strategy: Any) -> dict[str, Any]:
    """What the training stats record about ``strategy``: its name, replica count and devices."""
    import tensorflow as tf

    mirrored = isinstance(strategy, tf.distribute.MirroredStrategy)
    return {"strategy": type(strategy).__name__ if mirrored else "default",
            "replicas": int(strategy.num_replicas_in_sync),
            "devices": list(strategy.extended.worker_devices) if mirrored else []}


def class_weights(ys: Sequence[int]) -> dict[int, float]:
    """Weights that give both classes equal total weight."""
    counts = np.bincount(np.asarray(ys, dtype=int), minlength=2).astype(float)
    return {c: float(len(ys) / (2 * counts[c])) if counts[c] else 1.0 for c in (0, 1)}


class _EpochLog(keras.callbacks.Callback):
    def __init__(self, log: Log, epochs: int, n_images: int):
        super().__init__()
        self.log, self.epochs, self.n_images = log, epochs, n_images
        self.start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        dt = time.monotonic() - self.start
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()) if isinstance(v, float | int))
        self.log(f"epoch {epoch + 1}/{self.epochs} {shown} ({dt:.1f}s, {self.n_images / max(dt, 1e-9):.0f} img/s)")


class _EpochProgress(keras.callbacks.Callback):
    """Calls ``progress(epochs_done, epochs)`` after each epoch: the caller's hook (the flow's progress artifact;
    this module knows nothing of Prefect)."""

    def __init__(self, progress: Callable[[int, int], None], epochs: int):
        super().__init__()
        self.progress, self.epochs = progress, epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.progress(epoch + 1, self.epochs)


LN2 = math.log(2.0)
STALL_LOSS_MARGIN = 0.005  # a training loss above ln 2 minus this counts as pinned
STALL_AUC_MARGIN = 0.01  # a validation AUC below 0.5 plus this, in every epoch, means nothing was learned


def is_stalled_epoch(logs: dict[str, float]) -> bool:
    """One epoch's logs show a collapsed network: training loss pinned at ln 2 or above, or not finite."""
    loss = logs.get("loss")
    if loss is None:
        return False
    return not math.isfinite(loss) or loss >= LN2 - STALL_LOSS_MARGIN


class _ExactValAUC(keras.callbacks.Callback):
    """Replaces Keras's ``val_auc`` with the exact ROC AUC of the validation predictions.

    Keras's metric counts predictions in 200 fixed buckets. A freshly initialised network's outputs can all
    fall into one bucket (logit spread 5e-4 on the test images) while already ranking the classes well
    (exact AUC 0.83), so the metric reads 0.5000 for epochs: early stopping then judges a slow start as no
    progress and a stall check would restart a model that is learning. Callbacks after this one (the stall
    guard, early stopping, the CSV log) see the exact value."""

    def __init__(self, val_ds: Any, y: np.ndarray):
        super().__init__()
        self.val_ds, self.y = val_ds, np.asarray(y)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or len(np.unique(self.y)) < 2:
            return
        from sklearn.metrics import roc_auc_score

        scores = np.asarray(self.model.predict(self.val_ds, verbose=0), dtype=np.float64).reshape(-1)
        logs["val_auc"] = float(roc_auc_score(self.y, np.nan_to_num(scores, nan=0.5)))


class _StallGuard(keras.callbacks.Callback):
    """Stops a try whose first ``epochs`` epochs are all stalled (see the module docstring); a training
    shorter than that is judged on all its epochs."""

    def __init__(self, epochs: int, stop: bool):
        super().__init__()
        self.epochs, self.stop = epochs, stop
        self.stalled_epochs: list[int] = []
        self.stalled = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if is_stalled_epoch(logs or {}):
            self.stalled_epochs.append(epoch)
        n = min(self.epochs, int(self.params.get("epochs") or self.epochs))
        if n and epoch + 1 == n and self.stalled_epochs == list(range(n)):
            self.stalled = True
            if self.stop:
                self.model.stop_training = True


def train(
    train_entries: Sequence[Entry],
    val_entries: Sequence[Entry],
    stores: Sequence[Store],
    *,
    arch: str,
    spec: InputSpec,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    width: int,
    patience: int,
    seed: int,
    max_pixels: int,
    work_dir: str | Path,
    log: Log = print,
    robust_aug: float = 0.0,
    scale_aug: float = 0.0,
    scale_aug_min: float = 0.5,
    weights_path: str = "",
    stall_epochs: int = 3,
    max_attempts: int = 3,
    stall_lr_factor: float = 0.5,
    plateau_patience: int = 0,
    progress: Callable[[int, int], None] | None = None,
    devices: Sequence[str] | None = None,
) -> tuple[Any, dict[str, list[float]], dict[str, Any]]:
    """Fit a model. Returns (model with the best validation-AUC weights, per-epoch history, stats).

    ``work_dir`` holds the per-epoch backup; it is keyed by the caller (data + settings), so rerunning the
    same training after a crash resumes from the last finished epoch (and skips tries already found stalled).
    It is removed after success. ``robust_aug`` is the probability of each training-time degradation and
    ``scale_aug`` that of a down-scale alone, by a factor from ``scale_aug_min`` to 1 (see :mod:`dfd.robust`).
    A stalled try (see the module docstring) is restarted with seed ``seed + 1000 * k`` and learning rate
    ``learning_rate * stall_lr_factor ** k`` for try ``k``; ``stall_epochs = 0`` turns the check off. With
    ``plateau_patience`` > 0 the learning rate halves after that many epochs without a better validation AUC
    (down to 1/16 of the start). ``progress``, when given, is called with (epochs done, ``epochs``) after each
    epoch (a restarted try counts from its own first epoch again).

    The model is built and compiled under :func:`distribution_strategy` (``devices``: None = every visible GPU,
    mirrored when there are two or more; ``[]`` = no mirroring). ``batch_size`` is the *global* batch: under a
    ``MirroredStrategy`` each step's batch is split across the replicas (``batch_size / replicas`` each), so the
    learning dynamics match a one-device training; raise ``batch_size`` with the replica count to keep each
    device as busy. The strategy is logged and recorded in the stats (``distribution``).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(work_dir):
        tries_file = work_dir / "attempts.json"
        attempts = _read_attempts(tries_file, log)
        weights = class_weights([e.y for e in train_entries])
        strategy = distribution_strategy(devices)
        distribution = describe_strategy(strategy)
        log(f"training under the {distribution['strategy']} strategy with {distribution['replicas']} replica(s)"
            + (f" on {', '.join(distribution['devices'])}" if distribution["devices"] else "")
            + f"; global batch {batch_size}")
        started = time.monotonic()
        while True:
            k = len(attempts)
            last = k + 1 >= max(1, max_attempts)
            try_seed, try_lr = seed + 1000 * k, learning_rate * stall_lr_factor ** k
            suffix = f"-{k + 1}" if k else ""
            if k:
                log(f"try {k + 1}/{max_attempts}: restarting from seed {try_seed} at learning rate {try_lr:.2e}")
            keras.utils.set_random_seed(try_seed)
            with strategy.scope():  # variables mirrored on every replica; fit() splits each global batch
                model = build_model(arch, int(spec["size"]), width=width, learning_rate=try_lr, seed=try_seed,
                                    weights_path=weights_path)
            train_ds = _dataset(train_entries, stores, spec, batch_size, True, try_seed, max_pixels, robust_aug,
                                scale_aug, scale_aug_min)
            val_ds = _dataset(val_entries, stores, spec, batch_size, False, try_seed, max_pixels)
            history_csv = work_dir / f"history{suffix}.csv"
            guard = _StallGuard(stall_epochs, stop=not last)
            callbacks = [
                _Backup(work_dir / f"backup{suffix}", log),
                _ExactValAUC(val_ds, np.array([e.y for e in val_entries])),
                keras.callbacks.CSVLogger(str(history_csv), append=True),
                guard,
                keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience,
                                              restore_best_weights=True),
                _EpochLog(log, epochs, len(train_entries)),
            ]
            if progress is not None:
                callbacks.append(_EpochProgress(progress, epochs))
            if plateau_patience > 0:
                callbacks.insert(-1, keras.callbacks.ReduceLROnPlateau(
                    monitor="val_auc", mode="max", factor=0.5, patience=plateau_patience, min_lr=try_lr / 16))
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0, shuffle=False,
                      class_weight=weights, callbacks=callbacks)
            history = _read_history(history_csv)
            record = {"try": k + 1, "seed": try_seed, "learning_rate": try_lr,
                      "epochs": len(history.get("loss", [])), "outcome": "stalled" if guard.stalled else "trained"}
            if guard.stalled and not last:
                attempts.append(record)
                tries_file.write_text(json.dumps(attempts))
                log(f"try {k + 1} stalled: for the first {stall_epochs} epochs the training loss stayed at ln 2 or "
                    "above (or was not finite): a collapsed, constant output")
                continue
            pinned = bool(history.get("loss")) and all(is_stalled_epoch({"loss": v}) for v in history["loss"])
            no_signal = guard.stalled and (pinned or not any(v >= 0.5 + STALL_AUC_MARGIN
                                                             for v in history.get("val_auc", [])))
            if no_signal:
                record["outcome"] = "stalled"
                log(f"no signal found: every one of {k + 1} tries stayed pinned at ln 2 (a constant output) or "
                    "diverged; the model learned nothing and must not be promoted")
            attempts.append(record)
            break
        seconds = time.monotonic() - started
        epochs_run = len(history.get("loss", []))
        stats = {
            "epochs_run": epochs_run,
            "train_seconds": round(seconds, 2),
            "train_images": len(train_entries),
            "train_images_per_s": round(len(train_entries) * max(sum(a["epochs"] for a in attempts), 1)
                                        / max(seconds, 1e-9), 1),
            "class_weights": weights,
            "attempts": attempts,
            "no_signal": no_signal,
            "distribution": distribution,
        }
        shutil.rmtree(work_dir, ignore_errors=True)
        return model, history, stats


class _Backup(keras.callbacks.BackupAndRestore):
    """Keras's per-epoch backup, safe against a kill in the middle of its own write: it keeps the previous
    checkpoint as well (``double_checkpoint``) and falls back to it when the latest is unreadable; when neither
    can be read, training starts over (and says so) instead of failing."""

    def __init__(self, backup_dir: Path, log: Log):
        super().__init__(str(backup_dir), double_checkpoint=True)
        self._log = log

    def on_train_begin(self, logs: dict | None = None) -> None:
        initial = self.model.get_weights()
        try:
            super().on_train_begin(logs)
        except (OSError, ValueError, KeyError) as exc:
            self._log(f"the training checkpoint in {self.backup_dir} is unreadable ({type(exc).__name__}: "
                      f"{str(exc)[:120]}); training starts over from epoch 1")
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            self.model.set_weights(initial)
            self.model._initial_epoch = 0  # noqa: SLF001 - the attribute BackupAndRestore itself sets


class TrainingBusy(RuntimeError):
    """Another process is running the same training (same data and settings) in the same work folder."""


@contextlib.contextmanager
def _exclusive(work_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``work_dir`` for one training: two trainings of the same data and settings
    would otherwise share one checkpoint and one CSV log, and each tear the other's. The second is refused at
    once with a clear message (the lock dies with its process, so a killed run never blocks a later one)."""
    fd = os.open(work_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingBusy(f"another training of the same data and settings is running in {work_dir}; "
                               "wait for it to finish (or give this one another DFD_WORK_DIR)") from None
        yield
    finally:
        os.close(fd)


def _read_attempts(path: Path, log: Log) -> list[dict[str, Any]]:
    """The tries a killed run had already found stalled; an unreadable file counts as none."""
    if not path.is_file():
        return []
    try:
        tries = json.loads(path.read_text())
        return tries if isinstance(tries, list) else []
    except (OSError, ValueError):
        log(f"{path} is unreadable; starting from the first try")
        return []


def _read_history(path: Path) -> dict[str, list[float]]:
    """Per-epoch metrics from the CSV log; a resumed run's repeated epochs keep their last value. Rows that
    are not metrics (a second header written by an interrupted run, a torn last line) are skipped."""
    if not path.is_file():
        return {}
    by_epoch: dict[int, dict[str, str]] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if None in row.values() or not (row.get("epoch") or "").isdigit():
                continue  # a torn last line, or a second header
            by_epoch[int(row["epoch"])] = {k: v for k, v in row.items() if k != "epoch" and _is_number(v)}
    history: dict[str, list[float]] = {}
    for epoch in sorted(by_epoch):
        for k, v in by_epoch[epoch].items():
            history.setdefault(k, []).append(float(v))
    return history


def _is_number(value: str | None) -> bool:
    try:
        float(value if isinstance(value, str) else "")
        return True
    except ValueError:
        return False
