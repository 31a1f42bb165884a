"""Plots of a run's history table: they read the table, never recompute training."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_history(history: pd.DataFrame, path: str | Path | None = None, title: str = ""):
    """Three panels against epoch: train/test loss, test accuracy, batch size. Saves to ``path`` if given."""
    import matplotlib
    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc, ax_batch) = plt.subplots(1, 3, figsize=(12, 3.4), layout="constrained")
    ax_loss.plot(history.epoch, history.train_loss, label="train")
    ax_loss.plot(history.epoch, history.test_loss, label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log")
    ax_loss.legend()
    ax_acc.plot(history.epoch, history.test_acc, color="C2")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy")
    ax_batch.step(history.epoch, history.batch_size, where="mid", color="C3")
    ax_batch.set(xlabel="epoch", ylabel="batch size", yscale="log")
    fig.suptitle(title)
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_runs(histories: pd.DataFrame, y: str = "test_acc", x: str = "wall_time_s", ax=None, runs=None):
    """One line per run (mean over seeds, shaded min–max), from ``labkit.experiments.load_histories``."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 4), layout="constrained")[1]
    for i, (run, frame) in enumerate(histories.groupby("run", sort=False)):
        if runs is not None and run not in runs:
            continue
        by_epoch = frame.groupby("epoch")
        xs, mean = by_epoch[x].mean(), by_epoch[y].mean()
        ax.plot(xs, mean, label=run, color=f"C{i % 10}")
        ax.fill_between(xs, by_epoch[y].min(), by_epoch[y].max(), color=f"C{i % 10}", alpha=0.15)
    ax.set(xlabel=x.replace("_", " "), ylabel=y.replace("_", " "))
    return ax


PLAIN_TICKS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)


def plain_log(axis, ticks=PLAIN_TICKS) -> list[float]:
    """Label a log axis 1, 2, 5, 10, ... instead of powers of ten: the ``ticks`` inside the axis' view
    interval become the major ticks, printed with ``:g``, and the minor labels are dropped. Returns the
    ticks set. Call it after the data are plotted (the view interval must be final)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    low, high = sorted(axis.get_view_interval())
    chosen = [t for t in ticks if low <= t <= high]
    axis.set_ticks(chosen)
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    return chosen
