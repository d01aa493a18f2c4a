"""Publish-plot stage: the seed's acc, cm, roc and auc plots, plus loss, precision-recall, a per-class
score histogram and a reliability diagram, drawn with matplotlib's Agg backend into the run's folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

PLOT_FILES = ["acc.png", "loss.png", "auc.png", "cm.png", "roc.png", "pr.png", "hist.png", "reliability.png"]


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _curve(history: dict[str, list[float]], key: str, title: str, ylabel: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, style in ((key, "-o"), (f"val_{key}", "-s")):
        values = history.get(name, [])
        if values:
            ax.plot(range(1, len(values) + 1), values, style, ms=3,
                    label="validation" if name.startswith("val_") else "training")
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def write_plots(folder: str | Path, history: dict[str, list[float]], y: np.ndarray, s: np.ndarray,
                threshold: float) -> list[str]:
    """Write every plot for a run's test scores and training history; returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y).astype(int)
    s = np.asarray(s, dtype=np.float64)
    _curve(history, "accuracy", "Accuracy per epoch", "accuracy", folder / "acc.png")
    _curve(history, "loss", "Loss per epoch", "binary cross-entropy", folder / "loss.png")
    _curve(history, "auc", "ROC AUC per epoch", "AUC", folder / "auc.png")

    pred = (s >= threshold).astype(int)
    cm = np.array([[np.sum((y == a) & (pred == b)) for b in (0, 1)] for a in (0, 1)])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(title=f"Confusion matrix (threshold {threshold:.3f})", xlabel="predicted", ylabel="true",
           xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "deepfake"], yticklabels=["real", "deepfake"])
    _save(fig, folder / "cm.png")

    both = len(np.unique(y)) == 2
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if both:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(title="ROC curve (test)", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(loc="lower right")
    _save(fig, folder / "roc.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    if both:
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision)
        ax.axhline(y.mean(), ls="--", color="grey", label="chance")
        ax.legend(loc="lower left")
    ax.set(title="Precision-recall (test, deepfake = positive)", xlabel="recall", ylabel="precision")
    _save(fig, folder / "pr.png")

    fig, ax = plt.subplots(figsize=(5, 3.6))
    bins = np.linspace(0, 1, 26)
    for cls, name in ((0, "real"), (1, "deepfake")):
        if (y == cls).any():
            ax.hist(s[y == cls], bins=bins, alpha=0.6, label=name)
    ax.axvline(threshold, color="black", ls="--", label="threshold")
    ax.set(title="Fake-probability by true class (test)", xlabel="fake probability", ylabel="images")
    ax.legend()
    _save(fig, folder / "hist.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(s, edges[1:-1]), 0, 9)
    xs = [s[idx == b].mean() for b in range(10) if (idx == b).any()]
    ys = [y[idx == b].mean() for b in range(10) if (idx == b).any()]
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(xs, ys, "-o", label="model")
    ax.set(title="Reliability (test)", xlabel="mean predicted fake probability", ylabel="observed fake share")
    ax.legend(loc="upper left")
    _save(fig, folder / "reliability.png")
    return list(PLOT_FILES)
