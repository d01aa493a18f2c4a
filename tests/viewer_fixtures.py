"""Artifact-store contents for the viewer's tests and benchmark, written in the exact published formats:
retraining runs (run.json, metrics.json, metadata.json, config.json, real PNG plots) and scored batches
(summary.json, results.jsonl, results.csv), plus a way to start the production server on a free port.
"""

from __future__ import annotations

import csv
import io
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

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ("acc", "loss", "cm", "roc", "auc", "pr", "hist")
CHAMPION = "20260101-000000-tiny00"
REJECTED = "20260102-000000-abc123"


def split_metrics(rng: np.random.Generator, n: int = 40) -> dict[str, Any]:
    def at() -> dict[str, Any]:
        tn, fp, fn, tp = (int(v) for v in rng.integers(5, 15, size=4))
        return {
            "accuracy": round(float(rng.uniform(0.7, 0.95)), 4),
            "balanced_accuracy": round(float(rng.uniform(0.7, 0.95)), 4),
            "precision": round(float(rng.uniform(0.7, 0.95)), 4),
            "recall": round(float(rng.uniform(0.7, 0.95)), 4),
            "f1": round(float(rng.uniform(0.7, 0.95)), 4),
            "confusion_matrix": [[tn, fp], [fn, tp]],
            "per_class_accuracy": {"real": round(tn / (tn + fp), 4), "deepfake": round(tp / (tp + fn), 4)},
        }

    return {
        "roc_auc": round(float(rng.uniform(0.8, 0.99)), 4),
        "average_precision": round(float(rng.uniform(0.8, 0.99)), 4),
        "eer": round(float(rng.uniform(0.02, 0.2)), 4),
        "n": n,
        "at_threshold": at(),
        "at_0.5": at(),
    }


def plot_png(name: str, seed: int = 0) -> bytes:
    """A small real PNG plot (matplotlib, Agg) standing in for the retraining flow's ``<name>.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(3.2, 2.4), dpi=60)
    if name == "cm":
        ax.imshow(rng.integers(0, 20, size=(2, 2)), cmap="Blues")
    elif name == "hist":
        ax.hist([rng.beta(2, 5, 200), rng.beta(5, 2, 200)], bins=20, label=["real", "deepfake"])
    else:
        ax.plot(np.sort(rng.random(12)), label="train")
        ax.plot(np.sort(rng.random(12)), label="val")
    ax.set_title(name)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def run_files(version: str, decision: str, reason: str, seed: int = 0, champion_before: str | None = None,
              threshold: float = 0.5) -> dict[str, bytes]:
    """The files a retraining run publishes (without the model), keyed by file name."""
    rng = np.random.default_rng(seed)
    test, val = split_metrics(rng), split_metrics(rng)
    fingerprint = f"{seed:02d}" + "f00d" * 15 + "ab"
    counts = {"train": {"real": 70, "deepfake": 70}, "val": {"real": 15, "deepfake": 15},
              "test": {"real": 15, "deepfake": 15}, "quarantined": 2, "synthetic": 140}
    metrics = {"threshold": threshold, "threshold_rule": "max balanced accuracy on validation", "test": test,
               "validation": val}
    run = {
        "version": version, "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:05:00+00:00",
        "data_fingerprint": fingerprint, "data_counts": counts, "test_auc": test["roc_auc"],
        "test_ap": test["average_precision"], "test_accuracy": test["at_threshold"]["accuracy"],
        "threshold": threshold, "decision": decision, "reason": reason, "champion_before": champion_before,
        "arch": "patchnet", "demo_data": True, "plots": [f"{p}.png" for p in PLOTS],
    }
    config = {"epochs": 3, "arch": "patchnet", "batch_size": 16, "learning_rate": 0.002, "seed": seed}
    files = {
        "run.json": json.dumps(run, indent=2).encode(),
        "metrics.json": json.dumps(metrics, indent=2).encode(),
        "config.json": json.dumps(config, indent=2).encode(),
        "history.json": json.dumps({"loss": [0.7, 0.5, 0.4]}).encode(),
        "quarantine.json": b"[]\n",
        "split_manifest.csv": b"path,label,split\nreal/a.png,real,train\n",
    }
    for i, name in enumerate(PLOTS):
        files[f"{name}.png"] = plot_png(name, seed + i)
    return files


def publish_fake_run(artifacts: Path, version: str, decision: str, reason: str, seed: int = 1) -> None:
    """A complete run without a usable model (only listed, never scored with)."""
    from dfd.registry import publish_run
    from dfd.storage import open_store

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in run_files(version, decision, reason, seed).items():
            (Path(tmp) / name).write_bytes(data)
        meta = {"version": version, "threshold": 0.5, "input_spec": {"mode": "crop", "size": 32, "crops": 1},
                "class_names": ["real", "deepfake"], "arch": "patchnet", "created_at": "2026-01-02T00:05:00+00:00"}
        (Path(tmp) / "metadata.json").write_text(json.dumps(meta))
        publish_run(open_store(str(artifacts)), version, tmp)


def build_store(artifacts: Path, batch_rows: int = 40, batch_id: str = "batch-0001") -> dict[str, Any]:
    """A store with a real tiny champion (plus its run files and plots), a rejected run and a scored batch."""
    from helpers import publish_tiny_model

    artifacts.mkdir(parents=True, exist_ok=True)
    publish_tiny_model(artifacts, version=CHAMPION)
    run_dir = artifacts / "runs" / CHAMPION
    for name, data in run_files(CHAMPION, "promoted", "first model: no champion before", seed=0).items():
        (run_dir / name).write_bytes(data)
    publish_fake_run(artifacts, REJECTED, "rejected", "test AUC 0.81 is below the champion's 0.93 - 0.005")
    source = artifacts.parent / "inbox" / batch_id
    write_batch(artifacts, batch_id, source, batch_rows)
    return {"artifacts": artifacts, "champion": CHAMPION, "rejected": REJECTED, "batch_id": batch_id,
            "source": source}


def sample_image(i: int, size: int = 40) -> np.ndarray:
    from dfd.demo import synthetic_photo, upsampling_fake

    rng = np.random.default_rng(1000 + i)
    img = synthetic_photo(rng, size)
    return upsampling_fake(img, rng) if i % 2 else img


def write_batch(artifacts: Path, batch_id: str, source: Path, n_rows: int, n_images: int | None = None,
                error_every: int = 7, seed: int = 0) -> list[dict[str, Any]]:
    """``scores/<batch_id>/`` with ``n_rows`` results; the first ``n_images`` rows have real files in
    ``source`` (all of them when ``None``); every ``error_every``-th row is an error."""
    rng = np.random.default_rng(seed)
    n_images = n_rows if n_images is None else n_images
    source.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_rows):
        path = f"sub/img_{i:06d}.png" if i % 3 == 0 else f"img_{i:06d}.png"
        data = b""
        if i < n_images:
            data = png_bytes(sample_image(i)) if i % error_every != 3 else b"not an image at all"
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            (source / path).write_bytes(data)
        error = "not an image" if i % error_every == 3 else ""
        score = None if error else round(float(rng.random()), 6)
        rows.append({
            "path": path, "sha256": f"{i:064x}", "bytes": len(data) or 1234, "width": 0 if error else 40,
            "height": 0 if error else 40, "score": score,
            "label": "" if error else ("deepfake" if score >= 0.5 else "real"), "threshold": 0.5,
            "model_version": CHAMPION, "scored_at": "2026-01-03T10:00:00+00:00", "error": error,
        })
    folder = artifacts / "scores" / batch_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (folder / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts = {"real": sum(r["label"] == "real" for r in rows), "deepfake": sum(r["label"] == "deepfake" for r in rows),
              "error": sum(bool(r["error"]) for r in rows)}
    summary = {
        "batch_id": batch_id, "source": str(source), "model_version": CHAMPION, "threshold": 0.5,
        "started_at": "2026-01-03T10:00:00+00:00", "finished_at": "2026-01-03T10:01:00+00:00", "total": n_rows,
        "counts": counts, "errors_by_reason": {"not an image": counts["error"]} if counts["error"] else {},
        "results": {"csv": f"scores/{batch_id}/results.csv", "jsonl": f"scores/{batch_id}/results.jsonl"},
        "elapsed_s": 60.0, "files_per_s": round(n_rows / 60.0, 2),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return rows


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
