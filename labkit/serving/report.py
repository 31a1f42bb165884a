"""Reading a serving benchmark (the CSV of ``labkit serve-bench``): per setting and offered load, who serves
most, who answers fastest, and what the window controller did.

Each (load, mode, window) ran once, without seeds, so throughputs within ``TIE`` = 2 % of the best count
as a tie. ``load`` is the offered rate over the one-by-one capacity measured before the runs. Chapters:
Serving, Conclusions.
"""
from __future__ import annotations

import pandas as pd

TIE = 0.02
SETTING = ("generator", "switch_interval_ms")   # columns that split a CSV into separate experiments
COLUMNS = {"load": "load", "rate": "rate", "mode": "mode", "window_ms": "window ms", "throughput": "served/s",
           "vs_one": "× one-by-one", "p50_ms": "p50 ms", "p99_ms": "p99 ms", "mean_batch": "mean B"}


def settings(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The CSV split by ``SETTING`` (the columns it has): [('generator=process, switch_interval_ms=5.0',
    rows), ...], or [('', frame)] when it has none of them. Adds ``load`` and ``label`` columns."""
    frame = frame.assign(load=frame.rate / frame.one_by_one_rps, label=frame.apply(mode_label, axis=1))
    keys = [c for c in SETTING if c in frame.columns]
    if not keys:
        return [("", frame)]
    return [(", ".join(f"{k}={v}" for k, v in zip(keys, key if isinstance(key, tuple) else (key,))), rows)
            for key, rows in frame.groupby(keys, sort=False, dropna=False)]


def mode_label(row: pd.Series) -> str:
    """'one-by-one', 'controller' or 'window 5 ms'."""
    return row["mode"] if row["mode"] in ("one-by-one", "controller") else f"window {row.window_ms:g} ms"


def provenance(rows: pd.DataFrame) -> list[str]:
    """Where each part of a setting ran and the command, then the model and the two capacities."""
    from labkit.experiments import portable_command

    lines = [f"ran on {device}, torch {torch}, labkit commit {commit}, {date}\n  command: {portable_command(cmd)}"
             for (device, torch, commit, date, cmd), _ in
             rows.groupby(["device_name", "torch", "commit", "date", "command"], sort=False)]
    m = rows.iloc[0]
    return [*lines, f"model {m.model}, max_batch {m.max_batch}, {m.duration_s:g} s per run, capacity one by one "
                    f"{m.one_by_one_rps:,.0f}/s, in batches of {m.max_batch} {m.batched_rps:,.0f}/s"]


def load_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Every run of a setting with its throughput relative to one-by-one serving at the same rate."""
    one = rows[rows["mode"] == "one-by-one"].groupby("rate").throughput.mean()
    table = rows.assign(vs_one=rows.throughput / rows.rate.map(one))
    return table[list(COLUMNS)].rename(columns=COLUMNS)


def load_lines(rows: pd.DataFrame, tie: float = TIE) -> list[str]:
    """Per offered load: the modes serving within ``tie`` of the most, the lowest p99, the best window (most
    served, then lowest p99) against one-by-one, and each controller run against its p99 target."""
    lines = []
    for rate, at in rows.groupby("rate"):
        head = f"load {at.load.iloc[0]:.1f}× ({rate:,.0f}/s offered)"
        if not (at["mode"] == "one-by-one").any() or not (at["mode"] == "window").any():
            lines.append(f"{head}: no one-by-one or no window run to compare")
            continue
        one = at[at["mode"] == "one-by-one"].iloc[0]
        top = at.throughput.max()
        calm = at.loc[at.p99_ms.idxmin()]
        best = _best(at[at["mode"] == "window"], tie)
        lines += [f"{head}:",
                  f"  most served: {', '.join(at[at.throughput >= (1 - tie) * top].label)} "
                  f"(within {tie:.0%} of {top:,.0f}/s)",
                  f"  lowest p99: {calm.label}, {calm.p99_ms:.2f} ms (p50 {calm.p50_ms:.2f} ms)",
                  f"  {best.label} against one-by-one: {best.throughput / one.throughput:.2f}× the throughput, "
                  f"p50 {best.p50_ms:.2f} vs {one.p50_ms:.2f} ms, p99 {best.p99_ms:.2f} vs {one.p99_ms:.2f} ms"]
        for ctl in at[at["mode"] == "controller"].itertuples():
            lines += _controller(at, ctl, best)
    return lines


def verdict(rows: pd.DataFrame, tie: float = TIE) -> dict[str, str] | None:
    """The "which method wins" entry of a setting, read at its highest and lowest load (None without a
    one-by-one run at the highest load)."""
    heavy, light = rows[rows.rate == rows.rate.max()], rows[rows.rate == rows.rate.min()]
    if not (heavy["mode"] == "one-by-one").any():
        return None
    one, top = heavy[heavy["mode"] == "one-by-one"].iloc[0], _best(heavy, tie)
    return {"accuracy": "n/a (the same model answers)",
            "time": f"at {heavy.load.iloc[0]:.1f}× load: {top.label} (most served, lowest p99), "
                    f"{top.throughput / one.throughput:.1f}× one-by-one, p99 {top.p99_ms:.1f} vs {one.p99_ms:.0f} ms",
            "cost / energy": "not measured",
            "caveat": f"one run per setting; at {light.load.iloc[0]:.1f}× load the lowest p99 is "
                      f"{light.loc[light.p99_ms.idxmin()].label}"}


def _best(runs: pd.DataFrame, tie: float) -> pd.Series:
    """Among runs serving within ``tie`` of the most, the one with the lowest p99."""
    return runs[runs.throughput >= (1 - tie) * runs.throughput.max()].sort_values("p99_ms").iloc[0]


def _controller(at: pd.DataFrame, ctl, best: pd.Series) -> list[str]:
    lines, target = [], "no target recorded"
    if "target_p99_ms" in at:
        target = f"target {ctl.target_p99_ms:g} ms: {'met' if ctl.p99_ms <= ctl.target_p99_ms else 'missed'}"
        meet = at[(at["mode"] != "controller") & (at.p99_ms <= ctl.target_p99_ms)]
        lines.append(f"  modes with p99 <= the controller's target: {', '.join(meet.label) or 'none'}")
    lines.append(f"  controller: final window {ctl.window_ms:.2f} ms, p99 {ctl.p99_ms:.2f} ms ({target}), "
                 f"{ctl.throughput / best.throughput:.2f}× the throughput of {best.label}")
    return lines
