"""Publish-plot stage: the seed's acc, cm, roc and auc plots, plus loss, precision-recall, a per-class
score histogram and a reliability diagram, drawn with matplotlib's Agg backend into the run's folder.

Which plots exist, their file names and their order come from :data:`dfd.layout.PLOTS`; this module draws
each of them (the titles drawn inside the images are more specific than the viewer's captions)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from dfd.layout import PLOT_FILES, PLOTS  # noqa: E402

History = dict[str, list[float]]


def _curve(history: History, key: str, title: str, ylabel: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, style in ((key, "-o"), (f"val_{key}", "-s")):
        values = history.get(name, [])
        if values:
            ax.plot(range(1, len(values) + 1), values, style, ms=3,
                    label="validation" if name.startswith("val_") else "training")
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if ax.lines:
        ax.legend()
    ax.grid(alpha=0.3)
    return fig


def _confusion(y: np.ndarray, s: np.ndarray, threshold: float) -> plt.Figure:
    pred = (s >= threshold).astype(int)
    cm = np.array([[np.sum((y == a) & (pred == b)) for b in (0, 1)] for a in (0, 1)])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set(title=f"Confusion matrix (threshold {threshold:.3f})", xlabel="predicted", ylabel="true",
           xticks=[0, 1], yticks=[0, 1], xticklabels=["real", "deepfake"], yticklabels=["real", "deepfake"])
    return fig


def _both(y: np.ndarray) -> bool:
    return len(np.unique(y)) == 2


def _roc(y: np.ndarray, s: np.ndarray) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if _both(y):
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, label="model")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    ax.set(title="ROC curve (test)", xlabel="false positive rate", ylabel="true positive rate")
    ax.legend(loc="lower right")
    return fig


def _precision_recall(y: np.ndarray, s: np.ndarray) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if _both(y):
        precision, recall, _ = precision_recall_curve(y, s)
        ax.plot(recall, precision)
        ax.axhline(y.mean(), ls="--", color="grey", label="chance")
        ax.legend(loc="lower left")
    ax.set(title="Precision-recall (test, deepfake = positive)", xlabel="recall", ylabel="precision")
    return fig


def _histogram(y: np.ndarray, s: np.ndarray, threshold: float) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    bins = np.linspace(0, 1, 26)
    for cls, name in ((0, "real"), (1, "deepfake")):
        if (y == cls).any():
            ax.hist(s[y == cls], bins=bins, alpha=0.6, label=name)
    ax.axvline(threshold, color="black", ls="--", label="threshold")
    ax.set(title="Fake-probability by true class (test)", xlabel="fake probability", ylabel="images")
    ax.legend()
    return fig


def _reliability(y: np.ndarray, s: np.ndarray) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(s, edges[1:-1]), 0, 9)
    xs = [s[idx == b].mean() for b in range(10) if (idx == b).any()]
    ys = [y[idx == b].mean() for b in range(10) if (idx == b).any()]
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(xs, ys, "-o", label="model")
    ax.set(title="Reliability (test)", xlabel="mean predicted fake probability", ylabel="observed fake share")
    ax.legend(loc="upper left")
    return fig


# One drawing per stem of dfd.layout.PLOTS: (history, y, scores, threshold) -> figure.
DRAW: dict[str, Callable[[History, np.ndarray, np.ndarray, float], plt.Figure]] = {
    "acc": lambda h, y, s, t: _curve(h, "accuracy", "Accuracy per epoch", "accuracy"),
    "loss": lambda h, y, s, t: _curve(h, "loss", "Loss per epoch", "binary cross-entropy"),
    "auc": lambda h, y, s, t: _curve(h, "auc", "ROC AUC per epoch", "AUC"),
    "cm": lambda h, y, s, t: _confusion(y, s, t),
    "roc": lambda h, y, s, t: _roc(y, s),
    "pr": lambda h, y, s, t: _precision_recall(y, s),
    "hist": lambda h, y, s, t: _histogram(y, s, t),
    "reliability": lambda h, y, s, t: _reliability(y, s),
}


def write_plots(folder: str | Path, history: History, y: np.ndarray, s: np.ndarray, threshold: float) -> list[str]:
    """Write every plot of :data:`dfd.layout.PLOTS` for a run's test scores and training history; returns the
    file names (:data:`dfd.layout.PLOT_FILES`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y).astype(int)
    s = np.asarray(s, dtype=np.float64)
    for stem, name in zip(PLOTS, PLOT_FILES, strict=True):
        fig = DRAW[stem](history, y, s, threshold)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=90)
        plt.close(fig)
    return list(PLOT_FILES)
