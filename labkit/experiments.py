"""Sweeps: the same training run under several strategies and seeds, and the table that compares them.

    labkit sweep --dataset mnist --model mlp --epochs 10 --seeds 0 1 2 --out results/mnist-mlp \\
        --runs fixed:b_init=128 linear:b_init=64,a=96 exponential:b_init=32,a=2 loss:b_init=64,delta=ema

Each run lands in ``OUT/<label>/seed<s>/`` (history.csv, config.json); a finished run is skipped when the
sweep is started again, so an interrupted sweep resumes. ``summary(OUT)`` reads every history back into one
table: final accuracy, best accuracy, time and samples to reach a target accuracy, mean ± std over seeds.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd

from labkit.train import Diverged, TrainConfig, fit


def parse_run(spec: str) -> tuple[str, str, dict]:
    """'[LABEL=]NAME[:KEY=VALUE,...]' → (label, strategy name, params).

    'loss:delta=ema,alpha=0.3' → ('loss-delta=ema-alpha=0.3', 'loss', {'delta': 'ema', 'alpha': 0.3});
    'big=fixed:b_init=1024' is labelled 'big'. Values are read as int, then float, else kept as text;
    milestones are written 'milestones=5>128;10>256'.
    """
    head, _, params_text = spec.partition(":")
    label, _, name = head.rpartition("=")
    params = {}
    for item in filter(None, params_text.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"run {spec!r}: parameter {item!r} is not KEY=VALUE (e.g. loss:delta=ema,alpha=0.3)")
        params[key.replace("-", "_")] = _value(key, value)
    label = label or "-".join([name, *(f"{k}={v}" for k, v in params.items() if k != "milestones")])
    return label, name, params


def _value(key: str, text: str):
    if key == "milestones":
        return {int(e): int(b) for e, b in (pair.split(">") for pair in text.split(";") if pair)}
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def sweep(base: TrainConfig, runs: list[str], seeds: list[int], out: str | Path, progress: bool = True) -> pd.DataFrame:
    """Run every (run spec, seed) pair under ``out``; skip finished ones; return ``summary(out)``."""
    out = Path(out)
    parsed = [parse_run(spec) for spec in runs]
    for label, name, params in parsed:
        for seed in seeds:
            folder = out / label / f"seed{seed}"
            if _finished(folder, base.epochs):
                continue
            config = replace(base, strategy=name, strategy_params=params, seed=seed)
            try:
                fit(config, folder, resume=True, progress=progress)
            except Diverged as error:      # keep going: the diverged run's history stays in its folder
                print(f"{label} seed {seed}: {error}")
    return summary(out)


def _finished(folder: Path, epochs: int) -> bool:
    history = folder / "history.csv"
    return history.exists() and len(pd.read_csv(history)) >= epochs


def load_histories(out: str | Path) -> pd.DataFrame:
    """Every ``history.csv`` under ``out`` in one table, with ``run`` and ``seed`` columns."""
    frames = []
    for path in sorted(Path(out).glob("*/seed*/history.csv")):
        frame = pd.read_csv(path)
        frame.insert(0, "seed", int(path.parent.name.removeprefix("seed")))
        frame.insert(0, "run", path.parent.parent.name)
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no */seed*/history.csv under {out}: run a sweep there first")
    return pd.concat(frames, ignore_index=True)


def summary(out: str | Path, target: float | None = None) -> pd.DataFrame:
    """Per run, mean ± std over seeds of: final and best test accuracy, training time, samples, steps,
    and the time to first reach ``target`` accuracy (default: 0.99 × the lowest best accuracy of all runs)."""
    histories = load_histories(out)
    best = histories.groupby(["run", "seed"]).test_acc.max()
    target = round(0.99 * best.min(), 4) if target is None else target
    rows = []
    for (run, seed), h in histories.groupby(["run", "seed"]):
        reached = h[h.test_acc >= target]
        rows.append(dict(run=run, seed=seed, final_acc=h.test_acc.iloc[-1], best_acc=h.test_acc.max(),
                         final_loss=h.test_loss.iloc[-1], time_s=h.wall_time_s.iloc[-1],
                         samples=h.samples.iloc[-1], steps=h.steps.iloc[-1],
                         time_to_target_s=reached.wall_time_s.iloc[0] if len(reached) else math.nan,
                         final_batch=h.next_batch.iloc[-1]))
    per_seed = pd.DataFrame(rows)
    table = per_seed.drop(columns="seed").groupby("run").agg(["mean", "std"])
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    table.insert(0, "seeds", per_seed.groupby("run").seed.count())
    table.attrs["target"] = target
    return table.sort_values("final_acc_mean", ascending=False)


def first_reach(histories: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per (run, seed) of a ``load_histories`` table: the first epoch whose ``test_acc`` reaches ``target``,
    with ``wall_time_s``, ``steps`` and ``samples`` at the end of that epoch, and ``reached``. A run that
    never reaches the target has ``reached`` False and nan in the other columns (not its whole-run values,
    so a mean over seeds is a mean over the seeds that got there; count them with ``reached``)."""
    rows = []
    for (run, seed), h in histories.groupby(["run", "seed"]):
        hits = h.sort_values("epoch")
        hits = hits[hits.test_acc >= target]
        first = hits.iloc[0] if len(hits) else None
        rows.append(dict(run=run, seed=seed, reached=first is not None,
                         **{c: math.nan if first is None else first[c]
                            for c in ("epoch", "wall_time_s", "steps", "samples")}))
    return pd.DataFrame(rows, columns=["run", "seed", "reached", "epoch", "wall_time_s", "steps", "samples"])
