"""Comparing runs from their histories: who gets where first, how fast relative to a reference, and which
differences three seeds can tell apart.

    >>> from labkit.experiments import load_histories
    >>> from labkit import comparison as cmp
    >>> h = load_histories("results/baselines/cifar10-jpeg-resnet")
    >>> cmp.reach_ratios(h, "fixed-b_init=256")          # P4-style ratios: time to its accuracy / its time
    >>> cmp.comparison_table(h, targets=[0.87, 0.88])    # mean ± std per run, short labels

The noise rule of the chapters (``separable``): two runs are told apart on a metric only when their means
differ by more than the larger of their standard deviations over seeds; otherwise "cannot separate".
Dead or diverged seeds (``labkit.experiments.failed``) are left out of every mean and counted.
Chapters: Results, Conclusions.
"""
from __future__ import annotations

import math

import pandas as pd

from labkit.checks import check_int
from labkit.experiments import chosen_lrs, failed


def first_hit(history: pd.DataFrame, target: float) -> pd.Series | None:
    """The row of one run's first epoch (by ``epoch``, not row order) whose ``test_acc`` reaches ``target``,
    or None when no epoch does. The one definition of "first to a target" (``first_reach``, ``run_cost``)."""
    hits = history.sort_values("epoch")
    hits = hits[hits.test_acc >= target]
    return hits.iloc[0] if len(hits) else None


def first_reach(histories: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per (run, seed) of a ``load_histories`` table: the first epoch whose ``test_acc`` reaches ``target``,
    with ``wall_time_s``, ``steps`` and ``samples`` at the end of that epoch, and ``reached``. A run that
    never reaches the target has ``reached`` False and nan in the other columns (not its whole-run values,
    so a mean over seeds is a mean over the seeds that got there; count them with ``reached``)."""
    rows = []
    for (run, seed), h in histories.groupby(["run", "seed"]):
        first = first_hit(h, target)
        rows.append(dict(run=run, seed=seed, reached=first is not None,
                         **{c: math.nan if first is None else first[c]
                            for c in ("epoch", "wall_time_s", "steps", "samples")}))
    return pd.DataFrame(rows, columns=["run", "seed", "reached", "epoch", "wall_time_s", "steps", "samples"])


def reach_ratios(histories: pd.DataFrame, reference: str, target: float | None = None,
                 min_seeds: int | None = None) -> pd.DataFrame:
    """How fast each run gets where ``reference`` ends: per run, the time to first reach ``target`` (default:
    the reference's mean final accuracy over its seeds) divided by the reference's mean total time,

        ratio = mean over seeds of t(first epoch with test_acc ≥ target) / mean over seeds of t_reference

    (the P4/P4b ratios of the lab; < 1: faster than the reference). ``reached`` counts the seeds that got
    there; the mean time is over those seeds, and ``ratio`` is nan unless every seed reached the target and
    the run has at least ``min_seeds`` live seeds (default: as many as the reference), so a run with seeds
    missing or dead cannot win on the ones left. Failed (dead or diverged) seeds are left out. Sorted by
    ratio, unreached runs last."""
    dead = failed(histories)
    live = histories[~histories.set_index(["run", "seed"]).index.map(lambda key: bool(dead.get(key, False)))]
    ends = live.sort_values("epoch").groupby(["run", "seed"]).last()
    if reference not in ends.index.get_level_values("run"):
        raise ValueError(f"reference={reference!r} is not a run of these histories: expected one of "
                         f"{', '.join(sorted(set(ends.index.get_level_values('run'))))}")
    target = float(ends.loc[reference].test_acc.mean()) if target is None else target
    reference_time = float(ends.loc[reference].wall_time_s.mean())
    min_seeds = len(ends.loc[reference]) if min_seeds is None else min_seeds
    reach = first_reach(live, target)
    rows = []
    for run, r in reach.groupby("run"):
        rows.append(dict(run=run, target=target, seeds=len(r), reached=int(r.reached.sum()),
                         time_s=r.wall_time_s.mean(), reference_time_s=reference_time,
                         ratio=r.wall_time_s.mean() / reference_time
                         if r.reached.all() and len(r) >= min_seeds else math.nan))
    return pd.DataFrame(rows).sort_values(["ratio", "reached"], ascending=[True, False], ignore_index=True)


BANDS = ((32, "small"), (512, "medium"))     # the lab sheet's bands: 1–32, 64–512, 1024 and more


def batch_band(batch: int) -> str:
    """The lab sheet's band of a batch size: 'small' (≤ 32: noisy gradients, slow on hardware), 'medium'
    (≤ 512: the usual default) or 'large' (above: efficient and stable, needs its own LR). The sheet's
    gaps (33–63, 513–1023) go to the band above."""
    batch = check_int("batch", batch, low=1)
    return next((name for top, name in BANDS if batch <= top), "large")


# --- Reading a comparison: short labels, the table, the noise rule (chapters: Results, Conclusions) ---

SHORT_LABELS = {
    "fixed": "fixed {b_init}",
    "linear": "linear {b_init}+{a}→{max_batch}",
    "exponential": "exponential {b_init}×{a}→{max_batch}",
    "progressive": "progressive {b_init}→{target}",
    "cyclical": "cyclical {b_init}–{max_batch}",
    "gns": "gns {b_init}→≤{max_batch}",
    "confidence": "confidence {b_init}→≤{max_batch}",
    "goodput": "goodput {b_init}→≤{max_batch}",
    "epoch": "epoch milestones",
}


def short_label(run: str) -> str:
    """A run's folder label → a label short enough for a table: 'fixed-b_init=64' → 'fixed 64',
    'linear-b_init=64-a=64-max_batch=1024' → 'linear 64+64→1024', 'loss-b_init=64-delta=ema-alpha=0.3-…'
    → 'loss/ema α=0.3'. A label it cannot read (a custom ``LABEL=`` of ``parse_run``) is returned as is."""
    name, *items = run.split("-")
    params = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            if not params:
                return run
            last = list(params)[-1]          # a value with a dash in it: 'lr=1e-3' split apart
            params[last] += "-" + item
            continue
        params[key] = value
    if name == "loss" and "delta" in params:
        extra = {"alpha": " α={}", "window": " w={}"}
        return f"loss/{params['delta']}" + "".join(f.format(params[k]) for k, f in extra.items() if k in params)
    try:
        return SHORT_LABELS[name].format(**params)
    except KeyError:
        return run


def comparison_table(histories: pd.DataFrame, targets: list[float] = ()) -> pd.DataFrame:
    """Per run of a ``load_histories`` table, over its live seeds (dead or diverged ones are counted in
    ``failed`` and left out): ``acc``/``acc ±`` final test accuracy mean and std, ``time s``/``time ±``
    training time, ``energy kJ`` (nan when not measured), ``updates`` (optimizer steps) and ``final B``
    (means); for each target t, ``to t s``/``to t ±`` the mean and std of the time to first reach t over
    the seeds that reached it and ``reached t`` how many did. Index: the run's folder label, sorted by ``acc``, best first."""
    dead = failed(histories)
    ends = histories.sort_values("epoch").groupby(["run", "seed"]).last()
    ends["failed"] = dead.reindex(ends.index, fill_value=False)
    live = ends[~ends.failed]
    by_run = live.groupby("run")
    energy = live.energy_j if "energy_j" in live else pd.Series(math.nan, index=live.index)
    table = pd.DataFrame({
        "seeds": by_run.size(), "failed": ends.groupby("run").failed.sum().astype(int),
        "acc": by_run.test_acc.mean(), "acc ±": by_run.test_acc.std(),
        "time s": by_run.wall_time_s.mean(), "time ±": by_run.wall_time_s.std(),
        "energy kJ": energy.groupby("run").mean() / 1000, "updates": by_run.steps.mean(),
        "final B": by_run.batch_size.mean()})
    table["seeds"] = table.seeds.fillna(0).astype(int)
    live_keys = set(live.index)
    live_rows = histories[[key in live_keys for key in zip(histories.run, histories.seed)]]
    for target in targets:
        reach = first_reach(live_rows, target).groupby("run")
        table[f"to {target:g} s"] = reach.wall_time_s.mean()
        table[f"to {target:g} ±"] = reach.wall_time_s.std()
        table[f"reached {target:g}"] = reach.reached.sum().reindex(table.index, fill_value=0).astype(int)
    table.index.name = "run"
    return table.sort_values("acc", ascending=False, na_position="last")


def separable(a: list[float], b: list[float]) -> str:
    """The noise rule of the chapters, for two lists of per-seed scores: 'a' or 'b' (the higher mean), or
    'cannot separate' when |mean(a) − mean(b)| < the larger of the two sample stds (n − 1). Fewer than two
    scores on either side give no std: 'cannot separate'."""
    a, b = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return "cannot separate"
    gap = a.mean() - b.mean()
    if abs(gap) < max(a.std(), b.std()):
        return "cannot separate"
    return "a" if gap > 0 else "b"


def gap_in_std(table: pd.DataFrame, a: str, b: str, mean: str, std: str) -> tuple[float, float]:
    """(mean of row a − mean of row b, that gap in units of the larger of the two rows' stds)."""
    gap = table.at[a, mean] - table.at[b, mean]
    return gap, gap / max(table.at[a, std], table.at[b, std])


def leaders(table: pd.DataFrame, mean: str, std: str, higher: bool = True) -> tuple[str, list[str]]:
    """The best row by ``mean`` and the rows within noise of it (a gap below the larger of the two stds).
    Rows without a std (fewer than two seeds) take no part: one seed cannot lead or tie."""
    order = table[mean][table[std].notna()].dropna().sort_values(ascending=not higher)
    best = order.index[0]
    tied = [run for run in order.index[1:]
            if abs(order[run] - order[best]) < max(table.at[best, std], table.at[run, std])]
    return best, tied


def with_ties(best: str, tied: list[str]) -> str:
    """'best (tied within noise: x, y)' or 'best (ahead by more than the seed std)'."""
    return best + (f" (tied within noise: {', '.join(tied)})" if tied else " (ahead by more than the seed std)")


def separations(histories: pd.DataFrame) -> pd.DataFrame:
    """Every pair of runs, by final test accuracy over their live seeds: run a, run b, the gap of the means
    and ``separable``'s verdict ('a', 'b' or 'cannot separate')."""
    dead = failed(histories)
    ends = histories.sort_values("epoch").groupby(["run", "seed"]).test_acc.last()
    ends = ends[~dead.reindex(ends.index, fill_value=False)]
    runs = list(dict.fromkeys(ends.index.get_level_values("run")))
    rows = [dict(a=a, b=b, gap=ends[a].mean() - ends[b].mean(), verdict=separable(ends[a], ends[b]))
            for i, a in enumerate(runs) for b in runs[i + 1:]]
    return pd.DataFrame(rows, columns=["a", "b", "gap", "verdict"])


TWIN_COLUMNS = ("epoch", "batch_size", "samples", "train_loss", "test_acc")


def _trajectory(h: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """A run's rows ordered by seed and epoch, only ``seed`` and ``columns``: equal frames, the same training."""
    return h.sort_values(["seed", "epoch"])[["seed", *columns]].reset_index(drop=True)


def _end_times(histories: pd.DataFrame) -> pd.Series:
    """Final ``wall_time_s`` of each (run, seed)."""
    return histories.sort_values("epoch").groupby(["run", "seed"]).wall_time_s.last()


def twins(histories: pd.DataFrame) -> pd.DataFrame:
    """Pairs of runs that trained the same model: the same seeds, and per seed the same batch size, samples,
    train loss and test accuracy at every epoch, exactly (two rules that made the same decisions, with
    deterministic code). Their time gap is then not the method's: it is timing noise (the session, the
    machine, the code version). Columns: a, b, seeds, ``time a``/``time b`` (mean training time over the
    seeds) and ``ratio`` = time a / time b."""
    columns = [c for c in TWIN_COLUMNS if c in histories]
    runs = {run: _trajectory(h, columns) for run, h in histories.groupby("run", sort=False)}
    ends = _end_times(histories).groupby("run").mean()
    names = list(runs)
    rows = [dict(a=a, b=b, seeds=runs[a].seed.nunique(), **{"time a": ends[a], "time b": ends[b]},
                 ratio=ends[a] / ends[b])
            for i, a in enumerate(names) for b in names[i + 1:] if runs[a].equals(runs[b])]
    return pd.DataFrame(rows, columns=["a", "b", "seeds", "time a", "time b", "ratio"])


def retimed(histories: pd.DataFrame, again: pd.DataFrame) -> pd.DataFrame:
    """Each (run, seed) of ``again``, the same runs trained once more (one session, one seed each), beside
    its first training in ``histories``. ``same``: the two trajectories are identical (``TWIN_COLUMNS``),
    so the time gap is timing alone; a rule that reads the clock (goodput measures throughput) may decide
    differently and train another model. ``time first``/``time again``: final ``wall_time_s``;
    ``ratio`` = time again / time first. Index: run (a pair missing from ``histories`` is left out)."""
    columns = [c for c in TWIN_COLUMNS if c in histories and c in again]
    first = {key: _trajectory(h, columns) for key, h in histories.groupby(["run", "seed"])}
    t_first, t_again = _end_times(histories), _end_times(again)
    rows = [dict(run=run, seed=seed, same=_trajectory(h, columns).equals(first[run, seed]),
                 **{"time first": t_first[run, seed], "time again": t_again[run, seed]},
                 ratio=t_again[run, seed] / t_first[run, seed])
            for (run, seed), h in again.groupby(["run", "seed"], sort=False) if (run, seed) in first]
    header = ["run", "seed", "same", "time first", "time again", "ratio"]
    return pd.DataFrame(rows, columns=header).set_index("run")


def against(pairs: pd.DataFrame, run: str) -> pd.Series:
    """From a ``separations`` table: every other run's standing against ``run`` on final accuracy,
    'above', 'below' or 'cannot separate'."""
    standing = {}
    for pair in pairs.itertuples():
        if run not in (pair.a, pair.b):
            continue
        other = pair.b if pair.a == run else pair.a
        winner = {"a": pair.a, "b": pair.b}.get(pair.verdict)
        standing[other] = pair.verdict if winner is None else "above" if winner == other else "below"
    return pd.Series(standing, name=run, dtype=object)


def reach_verdict(histories: pd.DataFrame, reference: str, goal: float, name: str = "ratio") -> str:
    """One line on ``reach_ratios`` against ``reference``: the best non-fixed run's ratio and whether it
    meets ``goal`` (ratio ≤ goal), or 'not reached' with how many of its seeds got there."""
    ratios = reach_ratios(histories, reference)
    adaptive = ratios[~ratios.run.str.startswith("fixed")]
    head = f"{name} vs {short_label(reference)} (target {ratios.target.iloc[0]:.4f})"
    done = adaptive.dropna(subset=["ratio"])
    if len(done):
        best = done.iloc[0]
        verdict = "met" if best.ratio <= goal else "missed"
        return f"{head}: {short_label(best.run)} at {best.ratio:.2f} ({verdict}, goal ≤ {goal:g})"
    seeds = f"{int(adaptive.reached.sum())} of {int(adaptive.seeds.sum())} adaptive seeds"
    return f"{head}: not reached, {seeds} (goal ≤ {goal:g})"


def lab_goals(histories: pd.DataFrame, start: str = "fixed-b_init=64", p4: float = 0.20,
              p4b: float = 0.85) -> list[str]:
    """The lab's two goals as ``reach_verdict`` lines, then the best tuned fixed batch: **P4** against
    ``start`` (the fixed batch every adaptive run starts from), **P4b** against the fixed run (label
    'fixed…') with the highest mean final accuracy over its live seeds."""
    table = comparison_table(histories)
    fixed = table[table.index.str.startswith("fixed")]
    if fixed.empty:
        raise ValueError("no run labelled 'fixed…' in these histories: P4b needs a fixed batch to compare with")
    best = fixed.acc.idxmax()
    return [reach_verdict(histories, start, goal=p4, name="P4"),
            reach_verdict(histories, best, goal=p4b, name="P4b"),
            f"best tuned fixed batch: {short_label(best)}, {fixed.at[best, 'acc']:.4f} ± {fixed.at[best, 'acc ±']:.4f}"]


def verdict(histories: pd.DataFrame, target: float, start: str = "fixed-b_init=64"
            ) -> tuple[dict[str, str], list[str]]:
    """The Conclusions chapter's reading of one tuned comparison: ({accuracy, time, cost / energy, caveat}
    for the "which method wins" table, the lines that justify it). Accuracy: ``leaders`` on the final
    accuracy; time and energy: among the runs whose every seed reaches ``target``, the first to it and the
    one using least GPU energy; caveat: how many adaptive runs beat the best fixed batch beyond the noise,
    P4/P4b (``lab_goals``), and the runs with fewer seeds than the most (they take no part in leading)."""
    table = comparison_table(histories, [target]).rename(index=short_label)
    to, spread, reached = f"to {target:g} s", f"to {target:g} ±", f"reached {target:g}"
    fixed = table[table.index.str.startswith("fixed")]
    adaptive = table.drop(index=fixed.index)
    base = fixed.acc.idxmax()
    best, tied = leaders(table, "acc", "acc ±")
    standing = against(separations(histories.assign(run=histories.run.map(short_label))), base)
    standing = standing.reindex(adaptive.index)
    full = table[(table[reached] == table.seeds) & (table.seeds > 1)]
    goals = lab_goals(histories, start)
    few = table.index[table.seeds < table.seeds.max()].tolist()
    lines = [f"most accurate: {with_ties(best, tied)}, {table.at[best, 'acc']:.4f}",
             f"adaptive runs against {base}:", *(f"  {run}: {s}" for run, s in standing.items())]
    result = dict(accuracy=with_ties(best, tied), time=f"no run reaches {target:g} in every seed",
                  **{"cost / energy": "-"})
    if len(full):
        fast, fast_tied = leaders(full, to, spread, higher=False)
        result["time"] = f"to {target:g}: " + with_ties(fast, fast_tied)
        lines.append(f"first to {target:g} (every seed): {with_ties(fast, fast_tied)}, {full.at[fast, to]:.1f} s")
        if full["energy kJ"].notna().any():
            lean = full["energy kJ"].idxmin()
            result["cost / energy"] = f"least energy reaching {target:g}: {lean}"
            lines.append(f"least energy among the runs reaching {target:g}: {lean}, {full.at[lean, 'energy kJ']:.1f} kJ")
    lines += goals[:2]
    reached_goals = "P4 and P4b not reached" if all("not reached" in g for g in goals[:2]) else "P4/P4b: see above"
    result["caveat"] = (f"{int((standing == 'above').sum())} of {len(adaptive)} adaptive runs above {base} beyond "
                        f"the noise; {reached_goals}" + (f"; fewer seeds: {', '.join(few)}" if few else ""))
    return result, lines


def standoff(histories: pd.DataFrame, focus: tuple[str, ...] = ("gns", "goodput")) -> pd.DataFrame:
    """Issue 17's comparison of one tuned sweep: the best tuned fixed batch (the fixed run with the highest
    mean final accuracy), every run of a strategy in ``focus`` (the name before a label's first dash, so
    'goodput-adascale' counts), and the most accurate other adaptive run. Per row, over live seeds:
    ``acc``, ``acc ±``, ``time s``, and ``failed``, its dead or diverged seeds; ``vs best fixed``, its
    standing on final accuracy beyond the seed noise (``separations``); ``reached``, 'k/n' seeds that reach the best fixed batch's mean final accuracy; and
    ``ratio``, the time to that accuracy over the best fixed batch's time (``reach_ratios``, P4b; nan unless
    every seed reached it). Index: short labels, in that order."""
    table = comparison_table(histories)
    fixed = table[table.index.str.startswith("fixed")]
    if fixed.empty:
        raise ValueError("no run labelled 'fixed…' in these histories: the standoff needs a fixed batch")
    best = fixed.acc.idxmax()
    strategy = table.index.str.split("-").str[0]
    chosen = table.index[strategy.isin(focus)].tolist()
    others = table.index[~strategy.isin(("fixed", *focus)) & table["acc ±"].notna()]
    rows = [best, *chosen, *others[:1]]
    reach = reach_ratios(histories, best).set_index("run")
    standing = against(separations(histories), best)
    out = pd.DataFrame({
        "acc": table.acc, "acc ±": table["acc ±"], "time s": table["time s"], "failed": table.failed,
        "vs best fixed": standing.reindex(table.index).fillna("-"),
        "reached": [f"{reach.at[run, 'reached']}/{reach.at[run, 'seeds']}" if run in reach.index else "-"
                    for run in table.index],
        "ratio": reach.ratio.reindex(table.index)}).loc[rows]
    out.index = out.index.map(short_label)
    out.index.name = f"against {short_label(best)}"
    return out


def tuning_grid(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A ``tune_table`` (or ``tune.csv``) as one row per label and one column per peak LR: the final
    validation accuracy, '*' on the chosen LR (``chosen_lrs``), 'failed' for a dead or diverged trial, ''
    where the LR was not tried; ``edge`` says 'low'/'high' when the chosen LR is the smallest/largest
    tried (a wider grid could do better), 'below failed' when the next LR up failed."""
    chosen = chosen_lrs(table)
    lrs = sorted(table.lr.unique())
    rows = {}
    for label, trials in table.groupby("label"):
        trials = trials.set_index("lr")
        row = {f"{lr:g}": "" for lr in lrs}
        for lr, t in trials.iterrows():
            mark = "*" if chosen.get(label) == lr else ""
            row[f"{lr:g}"] = "failed" if t.failed else f"{t.val_acc:.{digits}f}{mark}"
        best, tried = chosen.get(label), sorted(trials.index)
        above = [lr for lr in tried if best is not None and lr > best]
        row["edge"] = ("" if best is None else "low" if best == tried[0] else "high" if best == tried[-1]
                       else "below failed" if bool(trials.loc[above[0], "failed"]) else "")
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def epoch_means(histories: pd.DataFrame, run: str, columns: list[str]) -> pd.DataFrame:
    """Per epoch of one run of a ``load_histories`` table: the mean over its seeds of ``columns``."""
    rows = histories[histories.run == run]
    if rows.empty:
        raise ValueError(f"run={run!r} is not in these histories: expected one of {sorted(histories.run.unique())}")
    return rows.groupby("epoch")[columns].mean()


def paired_gaps(table: pd.DataFrame, base: str = "plain", other: str = "curriculum"
                ) -> tuple[dict, list[str]]:
    """Per run, ``base`` against ``other`` data, from a table indexed by (data, run) with columns acc,
    acc ±, time s and samples: the accuracy gap base − other (``gap_in_std``: within noise when under the
    larger seed std), how many times faster ``other`` trains (time base / time other) and the share of
    fewer examples it sees (1 − samples other / samples base). Returns (the verdict entry: accuracy, time,
    cost / energy, caveat; printable lines). Chapter: Conclusions."""
    lines, notes = [], []
    for run in table.loc[base].index:
        pair = pd.DataFrame({base: table.loc[(base, run)], other: table.loc[(other, run)]}).T
        gap, units = gap_in_std(pair, base, other, "acc", "acc ±")
        faster = pair.at[base, "time s"] / pair.at[other, "time s"]
        fewer = 1 - pair.at[other, "samples"] / pair.at[base, "samples"]
        noise = "within noise" if abs(units) < 1 else f"{abs(units):.1f}× the seed std"
        lines.append(f"{run}: {base} − {other} accuracy {gap:+.4f} ({noise});\n  {other} "
                     f"{faster:.2f}× faster, {fewer:.0%} fewer examples seen")
        notes.append((run, gap, units, faster))
    entry = {"accuracy": f"{base} data: " + "; ".join(
                 f"{r} {g:+.3f} ({'within noise' if abs(u) < 1 else f'{abs(u):.1f}× std'})"
                 for r, g, u, _ in notes),
             "time": f"{other}: " + "; ".join(f"{r} {f:.2f}× faster" for r, *_, f in notes),
             "cost / energy": "follows time (fewer examples seen); energy not measured",
             "caveat": "faster because it sees fewer examples; a 2-epoch reference scored them"}
    return entry, lines
