"""The publish-plot stage draws exactly the plots that dfd.layout lists, under their file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfd import layout, plots


def test_every_listed_plot_is_drawn_and_nothing_else(tmp_path: Path):
    assert list(plots.DRAW) == list(layout.PLOTS)
    rng = np.random.default_rng(0)
    history = {"accuracy": [0.5, 0.6], "val_accuracy": [0.5, 0.55], "loss": [0.7, 0.6], "auc": [0.5, 0.7]}
    files = plots.write_plots(tmp_path / "run", history, rng.integers(0, 2, 40), rng.random(40), 0.5)
    assert files == layout.PLOT_FILES
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(layout.PLOT_FILES)
    one_class = plots.write_plots(tmp_path / "one", {}, np.zeros(5), rng.random(5), 0.5)  # nothing to curve
    assert all((tmp_path / "one" / name).stat().st_size > 0 for name in one_class)


def test_epoch_axes_tick_whole_epochs_only():
    for n in (2, 3, 7, 40):
        history = {"loss": list(np.linspace(0.7, 0.3, n)), "val_loss": list(np.linspace(0.7, 0.4, n))}
        fig = plots._curve(history, "loss", "Loss", "loss")
        ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= n]
        plots.plt.close(fig)
        assert ticks and all(float(t).is_integer() for t in ticks), (n, ticks)
