"""Reading a serving benchmark (the CSV of ``labkit serve-bench``): per setting and offered load, who serves
most, who answers fastest, and what the window controller did.

Each (load, mode, window) ran once, without seeds, so throughputs within ``TIE`` = 2 % of the best count
as a tie. ``load`` is the offered rate over the one-by-one capacity measured before the runs. The second
half (``prepare`` to ``summary_lines``) reads the whole table as the Serving chapter prints it: provenance,
every run, the ≥ 5× claim, where the p99 comes from, the controller runs. Chapters: Serving, Conclusions.
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
    return [*lines, (f"model {m.model}, max_batch {m.max_batch}, {m.duration_s:g} s per run, capacity one by one "
                     f"{m.one_by_one_rps:,.0f}/s, in batches of {m.max_batch} {m.batched_rps:,.0f}/s")]


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
                  (f"  most served: {', '.join(at[at.throughput >= (1 - tie) * top].label)} "
                   f"(within {tie:.0%} of {top:,.0f}/s)"),
                  f"  lowest p99: {calm.label}, {calm.p99_ms:.2f} ms (p50 {calm.p50_ms:.2f} ms)",
                  (f"  {best.label} against one-by-one: {best.throughput / one.throughput:.2f}× the throughput, "
                   f"p50 {best.p50_ms:.2f} vs {one.p50_ms:.2f} ms, p99 {best.p99_ms:.2f} vs {one.p99_ms:.2f} ms")]
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


# The whole benchmark table (every setting at once), as the Serving chapter prints it.

def yes_no(value) -> str:
    """'yes', 'no', or '-' for a missing value (the CSV stores booleans as True/False or blank)."""
    if pd.isna(value) or value == "":
        return "-"
    return "yes" if value in (True, "True", 1.0) else "no"


def span(values: pd.Series, digits: int = 2) -> str:
    """'low to high' of ``values`` rounded to ``digits``, or one number when both round the same."""
    low, high = f"{values.min():.{digits}f}", f"{values.max():.{digits}f}"
    return low if low == high else f"{low} to {high}"


def reproduce(command: str) -> str:
    """``labkit serve-bench`` with the arguments of ``command``, less where it ran (--device) and wrote
    (--out)."""
    import shlex

    words = shlex.split(command)
    words = words[words.index("serve-bench") + 1:] if "serve-bench" in words else []
    kept, skip = [], False
    for word in words:
        if skip or word.startswith(("--device=", "--out=")):
            skip = False
        elif word in ("--device", "--out"):
            skip = True
        else:
            kept.append(word)
    return " ".join(["labkit serve-bench", *kept])


def prepare(bench: pd.DataFrame) -> pd.DataFrame:
    """The table with ``load`` (rate over the one-by-one capacity) and, for window runs, ``formula``: the
    mean batch 1 + λw predicts, capped at max_batch (NaN for the other modes)."""
    window = bench["mode"] == "window"
    formula = (1 + bench.rate * bench.window_ms / 1e3).clip(upper=bench.max_batch)
    return bench.assign(load=bench.rate / bench.one_by_one_rps, formula=formula.where(window))


def header_lines(bench: pd.DataFrame) -> list[str]:
    """Where and how the table was made, the two capacities, the line s(B) ≈ s0 + c·B through them and
    the lone-call p99s s(1), s(B_max). Raises ValueError if the rows come from several runs."""
    from labkit.experiments import portable_command

    mixed = [c for c in ("device_name", "torch", "commit", "date", "command") if bench[c].nunique() != 1]
    if mixed:
        raise ValueError(f"the table mixes runs ({', '.join(mixed)} differ): pass one serve-bench CSV")
    m = bench.iloc[0]
    generators = " / ".join(dict.fromkeys(bench.generator))
    per_sample = (m.batch_ms - m.batch1_ms) / (m.max_batch - 1)
    return [
        (f"ran on: {m.device_name} ({m.device}), torch {m.torch}, Python {m.python}, "
         f"labkit commit {m.commit}, {m.date}"),
        f"command: {portable_command(m.command)}",
        f"reproduce (from the repository root, on a GPU): {reproduce(m.command)}",
        (f"model {m.model}, max_batch {m.max_batch}, {m.duration_s:g} s of arrivals per run, "
         f"{m.clients} clients as {generators}, seed {m.seed}, {m.torch_threads} torch thread(s), "
         f"GIL switch interval {m.switch_interval_ms:g} ms"),
        (f"capacity (burst): one by one {m.one_by_one_rps:,.0f} requests/s, {m.batch1_ms:.3f} ms per "
         f"request; batches of {m.max_batch}: {m.batched_rps:,.0f} requests/s, {m.batch_ms:.3f} ms per batch"),
        (f"batching raises the capacity {m.batched_rps / m.one_by_one_rps:.1f}×; s(B) ≈ s0 + c·B through "
         f"both points: s0 = {m.batch1_ms - per_sample:.3f} ms, c = {per_sample * 1e3:.1f} µs per sample"),
        (f"s for the bounds (p99 of lone calls): s(1) = {m.isolated_batch1_p99_ms:.3f} ms "
         f"({m.isolated_batch1_p99_ms / m.batch1_ms:.1f}× the burst's time per request), "
         f"s({m.max_batch}) = {m.isolated_batch_p99_ms:.3f} ms "
         f"({m.isolated_batch_p99_ms / m.batch_ms:.1f}× the burst's time per batch)")]


RUN_HEADER = (f"{'rate/s':>8s} {'load':>4s} {'mode':>10s} {'w ms':>5s} {'served/s':>9s} {'speedup':>7s} "
              f"{'p50 ms':>8s} {'p99 ms':>9s} {'wait':>8s} {'comp':>6s} {'lag':>6s} {'bound':>6s} {'ok':>3s} "
              f"{'batch':>5s} {'formula':>7s} {'claim':>5s}")


def run_table(bench: pd.DataFrame) -> list[str]:
    """Every run, one block per client generator: rate, load, mode, window, served/s, speedup, p50, p99
    and its parts (wait, compute, client lag), the bound w + s(B_max), whether p99 is within it, the mean
    batch, the 1 + λw formula (window runs) and whether the run meets the ≥ 5× claim."""
    bench, lines = prepare(bench), []
    m = bench.iloc[0]
    for generator in dict.fromkeys(bench.generator):
        lines += [(f"clients as {generator} (generator={generator!r}); p99s in ms; "
                   f"s({m.max_batch}) = {m.isolated_batch_p99_ms:.2f} ms"), RUN_HEADER]
        for r in bench[bench.generator == generator].itertuples():
            formula = f"{r.formula:7.1f}" if r.mode == "window" else f"{'-':>7s}"
            lines.append(f"{r.rate:8,.0f} {r.load:4.1f} {r.mode:>10s} {r.window_ms:5.2f} {r.throughput:9,.0f} "
                         f"{r.speedup:7.2f} {r.p50_ms:8.2f} {r.p99_ms:9.2f} {r.p99_wait_ms:8.2f} "
                         f"{r.p99_compute_ms:6.2f} {r.p99_lag_ms:6.2f} {r.p99_bound_ms:6.2f} "
                         f"{yes_no(r.p99_ok):>3s} {r.mean_batch:5.1f} {formula} {yes_no(r.meets_target):>5s}")
        lines.append("")
    return lines


def tested(bench: pd.DataFrame) -> pd.DataFrame:
    """The runs that test the claim (those with a ``target``: window runs at ≥ 5× the one-by-one
    capacity)."""
    return bench[bench.target.notna() & (bench.target != "")]


def claim_lines(bench: pd.DataFrame) -> list[str]:
    """The claim (≥ 5× one-by-one throughput at p99 ≤ w + s(B_max)) run by run, then per rate and
    generator how many windows met it, then how far the mean batch is from 1 + λw where the formula's
    assumptions hold (1 + λw ≤ B_max/2 and w ≥ s(B_max))."""
    bench = prepare(bench)
    claim, m, lines = tested(bench), bench.iloc[0], []
    if claim.empty:
        lines.append("No run in this table offered 5× the one-by-one capacity or more, so the claim was not "
                     "tested (a --quick run offers at most 3×).")
    for r in claim.itertuples():
        lines.append(f"{r.rate:,.0f}/s ({r.load:.1f}× one by one), clients as {r.generator}, window "
                     f"{r.window_ms:g} ms: {r.speedup:.1f}× one-by-one throughput, p99 {r.p99_ms:.2f} ms vs "
                     f"bound {r.p99_bound_ms:.2f} ms -> "
                     f"{'meets' if yes_no(r.meets_target) == 'yes' else 'misses'} the claim")
    one = bench[bench["mode"] == "one-by-one"].set_index(["rate", "generator"]).throughput
    for (rate, generator), rows in claim.groupby(["rate", "generator"], sort=False):
        met = sum(yes_no(v) == "yes" for v in rows.meets_target)
        lines.append(f"{rate:,.0f}/s, clients as {generator}: claim met by {met} of {len(rows)} windows "
                     f"(most speedup the offered rate allows: {rate / one[rate, generator]:.1f}×, "
                     f"the capacity: {m.batched_rps / m.one_by_one_rps:.1f}×)")
    light = bench[(bench["mode"] == "window") & (bench.formula <= 0.5 * bench.max_batch)
                  & (bench.window_ms >= m.isolated_batch_p99_ms)]
    if not light.empty:
        error = (light.mean_batch / light.formula - 1).abs()
        lines.append(f"mean batch vs 1 + λw where 1 + λw <= B_max/2 and w >= s(B_max): within "
                     f"{error.max():.0%} ({len(light)} runs, median deviation {error.median():.0%})")
    return lines


def p99_lines(bench: pd.DataFrame) -> list[str]:
    """Where the p99 comes from. Window runs, per load and generator: ranges of p99 wait − w, p99 compute,
    p99 client lag and p99 latency, and how many runs stayed within w + s. One-by-one runs: served/s, p99,
    p99 compute, and the utilisation rate × (time per request) with the burst's time and with s(1)."""
    bench = prepare(bench)
    m, window = bench.iloc[0], bench[bench["mode"] == "window"]
    s_one = m.isolated_batch1_p99_ms
    lines = [(f"window rows: ranges over the windows "
              f"{', '.join(f'{w:g}' for w in sorted(window.window_ms.unique()))} ms; "
              f"s = {m.isolated_batch_p99_ms:.2f} ms"),
             (f"{'load':>4s} {'generator':>9s} {'p99 wait − w':>16s} {'p99 comp':>14s} {'p99 lag':>16s} "
              f"{'p99 latency':>18s} {'within w + s':>12s}")]
    for (_, generator), rows in window.groupby(["rate", "generator"], sort=False):
        lines.append(f"{rows.load.iloc[0]:4.1f} {generator:>9s} {span(rows.p99_wait_ms - rows.window_ms):>16s} "
                     f"{span(rows.p99_compute_ms):>14s} {span(rows.p99_lag_ms):>16s} "
                     f"{span(rows.p99_ms, 1):>18s} {f'{int(rows.p99_ok.sum())} of {len(rows)}':>12s}")
    lines += ["", (f"one by one: {m.batch1_ms:.2f} ms per request in the burst, s(1) = {s_one:.2f} ms alone "
                  f"(p99)"),
              (f"{'load':>4s} {'generator':>9s} {'served/s':>9s} {'p99 ms':>10s} {'p99 comp':>8s} "
               f"{'rate × burst':>12s} {'rate × s(1)':>11s}")]
    for r in bench[bench["mode"] == "one-by-one"].itertuples():
        lines.append(f"{r.load:4.1f} {r.generator:>9s} {r.throughput:9,.0f} {r.p99_ms:10,.1f} "
                     f"{r.p99_compute_ms:8.2f} {r.rate * m.batch1_ms / 1e3:12.2f} {r.rate * s_one / 1e3:11.2f}")
    return lines


def controller_table(bench: pd.DataFrame, every: int) -> list[str]:
    """The controller runs: its target and bounds, then per run the decisions it made (one every
    ``every`` requests), its final window, p99 and whether it met the target, mean batch, served/s and
    the clients' p99 lag."""
    bench = prepare(bench)
    target = bench.iloc[0].target_p99_ms
    lines = [(f"target p99 {target:g} ms, window bounds [0.1, {target:g}] ms, a decision every {every} "
              f"requests"),
             (f"{'rate/s':>8s} {'load':>4s} {'generator':>9s} {'decisions':>9s} {'final w ms':>10s} "
              f"{'p99 ms':>8s} {'≤ target':>8s} {'batch':>6s} {'served/s':>9s} {'p99 lag':>7s}")]
    for r in bench[bench["mode"] == "controller"].itertuples():
        lines.append(f"{r.rate:8,.0f} {r.load:4.1f} {r.generator:>9s} {r.controller_steps:9.0f} "
                     f"{r.window_ms:10.2f} {r.p99_ms:8.2f} {yes_no(r.p99_ok):>8s} {r.mean_batch:6.1f} "
                     f"{r.throughput:9,.0f} {r.p99_lag_ms:7.2f}")
    return lines


def summary_lines(bench: pd.DataFrame) -> list[str]:
    """The benchmark's part of the chapter's summary: the capacities and lone-call p99s, per tested rate
    and generator the speedups and the windows that met the claim, and at the highest rate the clients'
    p99 lag and the batchers' p99 latency."""
    bench = prepare(bench)
    m, claim = bench.iloc[0], tested(bench)
    lines = [(f"- benchmark, {m.model} on {m.device_name}: capacity {m.one_by_one_rps:,.0f}/s one by one, "
              f"{m.batched_rps:,.0f}/s in batches of {m.max_batch} ({m.batched_rps / m.one_by_one_rps:.1f}×); "
              f"s(1) = {m.isolated_batch1_p99_ms:.2f} ms, s({m.max_batch}) = {m.isolated_batch_p99_ms:.2f} ms "
              f"alone")]
    if claim.empty:
        lines.append("- claim (≥ 5× at p99 ≤ w + s(B_max)): not tested by this table")
    for (rate, generator), rows in claim.groupby(["rate", "generator"], sort=False):
        met = rows[rows.meets_target.map(yes_no) == "yes"]
        lines.append(f"- claim at {rate:,.0f}/s ({rows.load.iloc[0]:.1f}×), clients as {generator}: speedup "
                     f"{span(rows.speedup, 1)}×, met by {len(met)} of {len(rows)} windows "
                     f"({', '.join(f'{w:g} ms' for w in met.window_ms) or 'none'})")
    top = bench[bench.rate == bench.rate.max()]
    lines.append(f"- benchmark at {top.rate.iloc[0]:,.0f}/s ({top.load.iloc[0]:.1f}×): clients' p99 lag "
                 f"{span(top.p99_lag_ms, 0)} ms, p99 latency of the batchers "
                 f"{span(top[top['mode'] != 'one-by-one'].p99_ms, 0)} ms")
    return lines


def by_rate(bench: pd.DataFrame, generator: str) -> list[tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame]]:
    """The runs of one client generator, per offered rate (ascending): ('12,007/s (5.0×)', the one-by-one
    runs, the window runs by window, the controller runs). The plots against the window draw these."""
    shown = prepare(bench)
    shown, out = shown[shown.generator == generator], []
    for rate, at in shown.groupby("rate"):
        label = f"{rate:,.0f}/s ({at.load.iloc[0]:.1f}×)"
        out.append((label, at[at["mode"] == "one-by-one"], at[at["mode"] == "window"].sort_values("window_ms"),
                    at[at["mode"] == "controller"]))
    return out


def by_mode(bench: pd.DataFrame, generator: str) -> list[tuple[str, float | None, str, pd.DataFrame]]:
    """The runs of one client generator, per mode: (mode, window or None, label, runs by rate) for
    one-by-one, each window (ascending), then the controller. The plots against the offered rate draw
    these."""
    shown = prepare(bench)
    shown = shown[shown.generator == generator].sort_values("rate", kind="stable")
    windows = sorted(shown.loc[shown["mode"] == "window", "window_ms"].unique())
    target = f"controller (target {shown.target_p99_ms.iloc[0]:g} ms)"
    return ([("one-by-one", None, "one by one", shown[shown["mode"] == "one-by-one"])]
            + [("window", w, f"window {w:g} ms", shown[(shown["mode"] == "window") & (shown.window_ms == w)])
               for w in windows]
            + [("controller", None, target, shown[shown["mode"] == "controller"])])
