"""Artifact-store contents for the viewer's tests and benchmark, made by the code that makes them in
production, so that a change of format on either side breaks a test: runs are published with
:mod:`dfd.registry` (``publish_run``, ``set_champion``), their metrics computed by :mod:`dfd.evaluate` and
their plots drawn by :func:`dfd.plots.write_plots`; batches are scored from real files by
:func:`dfd.scoring.score_folder` with a tiny trained champion. Plus a way to start the production server on a
free port. Training and scoring code is imported inside the functions: the viewer's own tests check that the
app imports none of it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from helpers import png_bytes
from PIL import Image

from dfd import layout

ROOT = Path(__file__).resolve().parents[1]
PLOTS = tuple(layout.PLOTS)  # the plot stems a run publishes (dfd.plots draws them all)
CHAMPION = "20260101-000000-tiny00"
REJECTED = "20260102-000000-abc123"
DATA_COUNTS = {"train": {"real": 70, "deepfake": 70}, "val": {"real": 15, "deepfake": 15},
               "test": {"real": 15, "deepfake": 15}, "quarantined": 2, "synthetic": 140}
CALIBRATION_IMAGES = 40  # sample images 0..39: the batches' images, on which the champion's threshold is chosen


def sample_image(i: int, size: int = 40) -> np.ndarray:
    """Image ``i``: a synthetic photo when ``i`` is even, an up-sampling fake of one when odd."""
    from dfd.demo import synthetic_photo, upsampling_fake

    rng = np.random.default_rng(1000 + i)
    img = synthetic_photo(rng, size)
    return upsampling_fake(img, rng) if i % 2 else img


def labelled_scores(seed: int, n: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Labels (alternating real, deepfake) and plausible scores, for a run without a usable model."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return y, np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, n), 0.001, 0.999)


def write_run_files(folder: Path, version: str, decision: str, reason: str, seed: int,
                    test: tuple[np.ndarray, np.ndarray], validation: tuple[np.ndarray, np.ndarray],
                    threshold: float) -> dict[str, Any]:
    """Write what a retraining run publishes besides its model into ``folder``: metrics (:mod:`dfd.evaluate`),
    history, configuration, quarantine, split manifest and the plots (:func:`dfd.plots.write_plots`).
    Returns the run record the flow writes once the run is published (``run.json``)."""
    from dfd import evaluate
    from dfd.plots import write_plots

    metrics = {"threshold": threshold, "threshold_rule": evaluate.THRESHOLD_RULE, "temperature": 1.0,
               "test": evaluate.metrics(*test, threshold), "validation": evaluate.metrics(*validation, threshold)}
    epochs = np.arange(1, 4)
    history = {"loss": 0.7 / epochs, "val_loss": 0.75 / epochs, "accuracy": 1 - 0.3 / epochs,
               "val_accuracy": 1 - 0.35 / epochs, "auc": 1 - 0.2 / epochs, "val_auc": 1 - 0.25 / epochs}
    history = {name: [float(v) for v in values] for name, values in history.items()}
    files = {
        layout.METRICS_FILE: metrics,
        layout.HISTORY_FILE: history,
        layout.CONFIG_FILE: {"epochs": 3, "arch": "patchnet", "batch_size": 16, "learning_rate": 0.002, "seed": seed},
        layout.QUARANTINE_FILE: [],
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2))
    (folder / layout.SPLIT_MANIFEST).write_text("path,label,split\nreal/a.png,real,train\n")
    plots = write_plots(folder, history, *test, threshold)
    t = metrics["test"]
    return {
        "version": version, "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:05:00+00:00",
        "data_fingerprint": f"{seed:02d}" + "f00d" * 15 + "ab", "data_counts": DATA_COUNTS,
        "arch": "patchnet", "test_auc": t["roc_auc"], "test_ap": t["average_precision"],
        "test_accuracy": t["at_threshold"]["accuracy"], "threshold": threshold, "temperature": 1.0,
        "demo_data": True, "reals_only": False, "plots": plots, "decision": decision, "reason": reason,
        "champion_before": None,
    }


def publish(artifacts: Path, version: str, record: dict[str, Any], folder: Path, champion: bool = False) -> None:
    """Publish ``folder`` as run ``version`` as the retraining flow does: the files (``_COMPLETE`` last), the
    champion pointer when promoted, then the run record."""
    from dfd.registry import publish_run, set_champion
    from dfd.storage import open_store

    store = open_store(str(artifacts))
    publish_run(store, version, folder)
    if champion:
        set_champion(store, version, reason=record["reason"])
    store.write_json(layout.run_key(version, layout.RUN_RECORD), record)


def publish_fake_run(artifacts: Path, version: str, decision: str, reason: str, seed: int = 1) -> None:
    """A complete run without a usable model (only listed, never scored with)."""
    with tempfile.TemporaryDirectory() as tmp:
        meta = {"version": version, "threshold": 0.5, "input_spec": {"mode": "crop", "size": 32, "crops": 1},
                "class_names": ["real", "deepfake"], "arch": "patchnet", "created_at": "2026-01-02T00:05:00+00:00"}
        (Path(tmp) / layout.METADATA_FILE).write_text(json.dumps(meta))
        scores = labelled_scores(seed)
        record = write_run_files(Path(tmp), version, decision, reason, seed, scores, scores, 0.5)
        publish(artifacts, version, record, Path(tmp))


def publish_champion(artifacts: Path, version: str = CHAMPION) -> float:
    """Train a tiny model, choose its threshold on the sample images as the evaluate task does (maximum
    balanced accuracy on validation, so that its batches hold both labels), publish it with its run files and
    make it champion. Returns the threshold."""
    from helpers import train_tiny_model

    from dfd import evaluate
    from dfd.model import save_model
    from dfd.predict import Predictor

    model, metadata = train_tiny_model(per_class=32, epochs=20)
    predictor = Predictor(model, metadata)
    y = np.arange(CALIBRATION_IMAGES) % 2
    validation = y, predictor.score_pixels(sample_image(i) for i in range(CALIBRATION_IMAGES))
    test = y, predictor.score_pixels(sample_image(500 + i) for i in range(CALIBRATION_IMAGES))
    threshold = evaluate.choose_threshold(*validation)
    with tempfile.TemporaryDirectory() as tmp:
        record = write_run_files(Path(tmp), version, "promoted", "first model: no champion before", 0, test,
                                 validation, threshold)
        headline = {k: record[k] for k in ("test_auc", "test_accuracy")}
        save_model(model, {**metadata, "version": version, "threshold": threshold,
                           "metrics": {"test": {"roc_auc": headline["test_auc"], "n": CALIBRATION_IMAGES,
                                                "accuracy": headline["test_accuracy"]}}}, tmp)
        publish(artifacts, version, record, Path(tmp), champion=True)
    return threshold


def build_store(artifacts: Path, batch_rows: int = 40, batch_id: str = "batch-0001") -> dict[str, Any]:
    """A store with a real tiny champion (plus its run files and plots), a rejected run and a scored batch."""
    artifacts.mkdir(parents=True, exist_ok=True)
    threshold = publish_champion(artifacts)
    publish_fake_run(artifacts, REJECTED, "rejected", "test AUC 0.81 is below the champion's 0.93 - 0.005")
    source = artifacts.parent / "inbox" / batch_id
    write_batch(artifacts, batch_id, source, batch_rows)
    return {"artifacts": artifacts, "champion": CHAMPION, "rejected": REJECTED, "batch_id": batch_id,
            "source": source, "threshold": threshold}


def champion_predictor(artifacts: Path) -> Any:
    """The champion's predictor, from the process's one model cache (the one the viewer uses too)."""
    from dfd.predict import load_published
    from dfd.registry import champion_version
    from dfd.storage import open_store

    store = open_store(str(artifacts))
    return load_published(store, str(champion_version(store)), artifacts.parent / "model-cache")


def batch_path(i: int) -> str:
    """File ``i``'s path in a batch; every third is in a folder of its own, and paths sort in the order of ``i``
    (results are in path order, so row ``i`` is file ``i``)."""
    return f"img_{i:06d}/face.png" if i % 3 == 0 else f"img_{i:06d}.png"


def write_batch(artifacts: Path, batch_id: str, source: Path, n_rows: int, n_images: int | None = None,
                error_every: int = 7) -> dict[str, Any]:
    """Score a batch as the scoring flow does: ``n_images`` files (all ``n_rows`` when ``None``) written into
    ``source``, every ``error_every``-th not an image (file ``i`` with ``i % error_every == 3``), scored by
    :func:`dfd.scoring.score_folder` with the champion into ``scores/<batch_id>/``. Returns the summary.

    With fewer files than rows (the benchmark's big batch), the other rows are files with the content of the
    scored ones that are not in ``source``, written by :func:`dfd.scoring.write_results` from the ledger."""
    from dfd.scoring import score_folder

    n_images = n_rows if n_images is None else n_images
    for i in range(n_images):
        path = source / batch_path(i)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(sample_image(i)) if i % error_every != 3 else b"not an image at all")
    predictor = champion_predictor(artifacts)
    summary = score_folder(str(source), str(artifacts), predictor, predictor.version, batch_id=batch_id,
                           log_fn=lambda _: None)
    return summary if n_images == n_rows else pad_batch(artifacts, batch_id, n_rows, predictor)


def pad_batch(artifacts: Path, batch_id: str, n_rows: int, predictor: Any) -> dict[str, Any]:
    """Rewrite a scored batch's results with ``n_rows`` rows: its own, then copies of them under other paths."""
    from dfd.scoring import Ledger, write_results
    from dfd.storage import ObjectInfo, open_store

    store = open_store(str(artifacts))
    prefix = layout.batch_key(batch_id)
    rows = [json.loads(line) for line in store.read_text(layout.batch_key(batch_id, layout.RESULTS_JSONL)).splitlines()]
    items = [ObjectInfo(r["path"], r["bytes"], 0.0) for r in rows]
    sha_of = {r["path"]: r["sha256"] for r in rows}
    for i in range(n_rows - len(rows)):
        row = rows[i % len(rows)]
        items.append(ObjectInfo(f"copies/{i:07d}.png", row["bytes"], 0.0))
        sha_of[items[-1].key] = row["sha256"]
    ledger = Ledger(store, prefix, predictor.version).load()
    counts = write_results(store, prefix, items, sha_of, ledger, {}, threshold=predictor.threshold,
                           model_version=predictor.version)
    summary = {**store.read_json(layout.batch_key(batch_id, layout.SUMMARY_JSON)), **counts}
    store.write_json(layout.batch_key(batch_id, layout.SUMMARY_JSON), summary)
    return summary


def batch_row(artifacts: Path, data: bytes, work: Path) -> dict[str, Any]:
    """The row batch scoring gives the file ``data`` with the champion of ``artifacts``: the file alone in a
    folder under ``work``, scored by :func:`dfd.scoring.score_folder` into a store of its own there."""
    from dfd.scoring import score_folder

    folder = Path(tempfile.mkdtemp(dir=work))
    (folder / "in").mkdir()
    (folder / "in" / "upload.png").write_bytes(data)
    predictor = champion_predictor(artifacts)
    summary = score_folder(str(folder / "in"), str(folder / "out"), predictor, predictor.version, batch_id="one",
                           log_fn=lambda _: None)
    assert summary["errors"] == 0, summary
    return json.loads((folder / "out" / layout.batch_key("one", layout.RESULTS_JSONL)).read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(artifacts: Path, env: dict[str, str] | None = None, timeout: float = 120.0,
                 threads: int = 8) -> tuple[subprocess.Popen, str]:
    """Start ``python -m app`` (waitress) on a free loopback port; returns the process and its base URL."""
    port = free_port()
    full_env = {**os.environ, "ARTIFACTS_URL": str(artifacts), "VIEWER_REFRESH_SECONDS": "1",
                "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    log = tempfile.NamedTemporaryFile(prefix="viewer-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "--port", str(port), "--threads", str(threads)],
        cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"viewer exited with {proc.returncode}: {Path(log.name).read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return proc, base
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"viewer did not answer within {timeout} s: {Path(log.name).read_text()[-2000:]}")


def wait_ready(base: str, timeout: float = 300.0) -> dict[str, Any]:
    """Wait until ``GET /readyz`` answers 200: the champion is loaded and has made one explained prediction,
    so that no later request pays for loading TensorFlow and the model. Fails naming what it waited for."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=max(1.0, deadline - time.monotonic())) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 503: no model yet, or busy
            last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"the viewer at {base} did not load its model within {timeout:.0f} s (GET /readyz: {last})")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def image_file(tmp: Path, i: int = 0, size: int = 64) -> Path:
    path = tmp / f"upload_{i}.png"
    Image.fromarray(sample_image(i, size)).save(path)
    return path
