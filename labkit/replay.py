"""Why the batch moved: a finished run's decisions replayed from its own log (``labkit replay RUN``).

A run folder of ``labkit.train.fit`` holds ``config.json`` (the strategy's name and parameters) and
``history.csv``: one row per epoch with that epoch's signals, the batch the strategy chose after it
(``next_batch``) and why (``reason``). With ``decide_every="epoch"`` fit takes exactly one decision per row, so
a fresh strategy built from ``config.json`` and fed each row's signals in turn must choose the same batches:

    loss = train_loss,  entropy = train_entropy,  epoch = epoch,
    step_time = epoch_time_s / the epoch's steps   (``steps`` is cumulative: its difference; row 1: its own),
    gns = gns                                       (left out where the row has none, as fit leaves it out),
    memory = peak_mem_mb / memory_budget_mb         (only when the config set a budget: then it is the
                                                     usage fit passed; else the budget was the device's
                                                     memory, which the log does not hold, and it is left out)

Each strategy reads the signals in its ``uses`` and ignores the rest, as in fit. What the log does not hold
is not replayed: the memory signal of a run without a budget, and out-of-memory halvings inside an epoch, so a
strategy that reads ``memory`` may differ (``caveat`` says so). A run with ``decide_every="step"`` decided
inside epochs, which per-epoch rows cannot replay: ``ValueError``. A last row that stopped the run (diverged or
dead: reason "stopped: ...") took no decision and is left out.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from labkit.experiments import read_history

SIGNALS = ("loss", "entropy", "epoch", "step_time", "gns", "memory")   # in the order fit passes them
NEEDED = ("epoch", "batch_size", "steps", "train_loss", "train_entropy", "epoch_time_s", "next_batch", "reason")


def signals(history: pd.DataFrame, memory_budget_mb: float | None = None) -> list[dict[str, float]]:
    """The signals fit passed to ``strategy.step`` after each epoch row of ``history`` (see the module's
    docstring): one dict per row; ``gns`` left out where it is NaN, ``memory`` where it cannot be rebuilt
    (no ``memory_budget_mb``, or no peak logged)."""
    steps = history["steps"].astype(int)
    per_epoch = steps.diff().fillna(steps).astype(int)        # steps is cumulative; the first row its own
    readings = []
    for row, n in zip(history.itertuples(index=False), per_epoch):
        reading = {"loss": float(row.train_loss), "entropy": float(row.train_entropy), "epoch": int(row.epoch),
                   "step_time": row.epoch_time_s / n if n > 0 else math.nan}
        gns = getattr(row, "gns", math.nan)
        if pd.notna(gns):
            reading["gns"] = float(gns)
        peak = getattr(row, "peak_mem_mb", math.nan)
        if memory_budget_mb and pd.notna(peak):
            reading["memory"] = peak / memory_budget_mb
        readings.append(reading)
    return readings


def replay(folder: str | Path) -> pd.DataFrame:
    """Replay the decisions of the run in ``folder``: a table with one row per decision, the columns epoch,
    batch_size, the signals (NaN where not passed), next_batch (logged), replayed, same (the two batches agree),
    reason (logged) and replayed_reason. ``table.attrs`` holds ``strategy`` (its name), ``uses`` (the signals it
    reads) and ``caveat`` (what the log cannot replay for it, or ""); ``verdict(table)`` sums it up."""
    from labkit.strategies import build

    folder = Path(folder)
    config, history = _read(folder)
    name, params = config.get("strategy"), config.get("strategy_params") or {}
    if config.get("decide_every", "epoch") != "epoch":
        raise ValueError(f"{folder} decided every step (decide_every={config['decide_every']!r}): those decisions "
                         f"were taken inside epochs, which history.csv does not log; only per-epoch runs replay")
    strategy = build(name, **_from_json(params))
    stopped = history["reason"].fillna("").astype(str).str.startswith("stopped:")
    history = history[~stopped].reset_index(drop=True)
    budget = config.get("memory_budget_mb")
    readings = signals(history, budget)
    replayed = []
    for reading in readings:
        try:
            replayed.append(strategy.step(**reading))
        except TypeError as error:                              # a required signal the log does not hold
            hint = (" (history.csv holds the memory signal only for runs with memory_budget_mb set)"
                    if "memory" in strategy.requires else "")
            raise ValueError(f"cannot replay {folder}: {error}{hint}") from None
    table = history[["epoch", "batch_size"]].copy()
    table["epoch"] = table["epoch"].astype(int)
    for signal in SIGNALS:
        if signal != "epoch":
            table[signal] = [reading.get(signal, math.nan) for reading in readings]
    table["next_batch"] = history["next_batch"].astype(int)
    table["replayed"] = pd.Series(replayed, dtype="int64")
    table["same"] = table["next_batch"] == table["replayed"]
    table["reason"] = history["reason"].fillna("").astype(str)
    table["replayed_reason"] = [decision.reason for decision in strategy.history]
    table.attrs.update(strategy=name, uses=tuple(strategy.uses), caveat=_caveat(strategy, budget, history))
    return table


def verdict(table: pd.DataFrame) -> str:
    """'replayed N decisions of S: all match the log', or 'K of N differ from the log (first at epoch E)',
    and the caveat where one applies."""
    n, differ = len(table), table[~table["same"]]
    name = table.attrs.get("strategy", "the strategy")
    line = (f"replayed {n} decisions of {name}: all match the log" if differ.empty else
            f"replayed {n} decisions of {name}: {len(differ)} of {n} differ from the log "
            f"(first at epoch {int(differ['epoch'].iloc[0])})")
    caveat = table.attrs.get("caveat", "")
    return f"{line}; note: {caveat}" if caveat else line


def _from_json(params: dict) -> dict:
    """The strategy's parameters as given to fit: JSON wrote integer keys (an epoch's milestones) as text."""
    return {name: {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in value.items()}
            if isinstance(value, dict) else value for name, value in params.items()}


def _caveat(strategy, budget: float | None, history: pd.DataFrame) -> str:
    """What the log cannot replay for ``strategy``: only for one that reads the memory signal."""
    if "memory" not in strategy.uses:
        return ""
    if budget:
        said = f"{strategy.name} reads memory, replayed as peak_mem_mb / memory_budget_mb"
    else:
        said = (f"{strategy.name} reads memory, which the log lacks without memory_budget_mb (the budget was the "
                f"device's memory): replayed without it, so it may differ")
    retries = int(history["oom_retries"].sum()) if "oom_retries" in history else 0
    return said + (f"; the run's {retries} out-of-memory retries are not replayed" if retries else "")


def _read(folder: Path) -> tuple[dict, pd.DataFrame]:
    """(config, history) of a run folder, or a one-line error saying what is missing or unreadable."""
    if not folder.is_dir():
        what = "a file, not a run folder" if folder.exists() else "no such run folder"
        raise FileNotFoundError(f"{folder}: {what}; give a folder written by `labkit train` (config.json, "
                                f"history.csv)")
    for file in ("config.json", "history.csv"):
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder}: no {file} there; give a run folder written by `labkit train` "
                                    f"(config.json, history.csv)")
    try:
        config = json.loads((folder / "config.json").read_text())["config"]
        if not isinstance(config, dict) or not isinstance(config.get("strategy"), str):
            raise TypeError("no strategy named in its 'config'")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder / 'config.json'} is not a readable run config ({type(error).__name__}: "
                         f"{error})") from None
    history = read_history(folder / "history.csv")           # checked whole, or BrokenRun naming the problem
    missing = [column for column in NEEDED if column not in history]
    if missing:
        raise ValueError(f"{folder / 'history.csv'} lacks the column(s) {', '.join(missing)}: not a history "
                         f"written by `labkit train`")
    return config, history
