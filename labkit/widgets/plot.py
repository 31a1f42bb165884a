"""Matplotlib drawings of batch-size trajectories, shared by the live panel and the chapters' experiments.

A trajectory is the list B_0 … B_n that ``labkit.widgets.trajectory`` returns: B_0 before the first
decision, B_k after decision k. It is drawn as a step line on a log₂ axis (batch sizes grow by factors).
Under it, optionally: the signal that drove it (reading k fed to decision k + 1) and the learning rate
coupled to it (lr_k used with B_k).
"""
from __future__ import annotations

from typing import Mapping, Sequence


def plot_trajectories(runs: Mapping[str, Sequence[int]] | Sequence[int], *, signal: Sequence[float] | None = None,
                      signal_label: str = "signal", lr: Mapping[str, Sequence[float]] | Sequence[float] | None = None,
                      bounds: tuple[int, int] | None = None, title: str | None = None, figsize=(7.0, 3.6)):
    """Draw one trajectory or several (``{label: sizes}``); returns the matplotlib figure.

    Args:
        runs: B_0 … B_n, or ``{label: B_0 … B_n}`` for several.
        signal: readings fed to the strategy, drawn in a small axis below.
        lr: learning rates lr_0 … lr_n (or ``{label: lrs}``), drawn in another small axis below.
        bounds: (min_batch, max_batch), drawn as dashed lines.
    """
    import matplotlib.pyplot as plt

    if not isinstance(runs, Mapping):
        runs = {"": runs}
    if lr is not None and not isinstance(lr, Mapping):
        lr = {"": lr}
    lower = int(signal is not None) + int(lr is not None)
    height = figsize[1] * (1 + 0.35 * lower)
    fig, axes = plt.subplots(1 + lower, 1, sharex=True, figsize=(figsize[0], height), squeeze=False,
                             height_ratios=[3] + [1] * lower, layout="constrained")
    ax, rest = axes[0, 0], [a[0] for a in axes[1:]]
    for label, sizes in runs.items():
        ax.step(range(len(sizes)), list(sizes), where="post", label=label or None, lw=2)
    if bounds is not None:
        for b in bounds:
            ax.axhline(b, ls="--", lw=1, color="tab:orange", alpha=0.8)
    ax.set_yscale("log", base=2)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylabel("batch size B")
    ax.grid(alpha=0.25)
    if any(runs):
        ax.legend(frameon=False, fontsize="small")
    if title:
        ax.set_title(title, fontsize="medium")
    if signal is not None:
        sax = rest.pop(0)
        sax.plot(range(1, len(signal) + 1), list(signal), color="tab:green", lw=1.5)
        sax.set_ylabel(signal_label, fontsize="small")
        sax.grid(alpha=0.25)
    if lr is not None:
        lax = rest.pop(0)
        for label, values in lr.items():
            lax.step(range(len(values)), list(values), where="post", lw=1.5, label=label or None)
        lax.set_ylabel("learning rate", fontsize="small")
        lax.grid(alpha=0.25)
        if any(lr):
            lax.legend(frameon=False, fontsize="small")
    axes[-1, 0].set_xlabel("decision k")
    return fig
