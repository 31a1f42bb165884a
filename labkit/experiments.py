"""Sweeps: the same training run under several strategies and seeds, and the table that compares them.

    labkit sweep --dataset mnist --model mlp --epochs 10 --seeds 0 1 2 --out results/mnist-mlp \\
        --runs fixed:b_init=128 linear:b_init=64,a=96 exponential:b_init=32,a=2 loss:b_init=64,delta=ema

Each run lands in ``OUT/<label>/seed<s>/`` (history.csv, config.json); a finished run is skipped when the
sweep is started again, so an interrupted sweep resumes (a run killed mid-epoch continues from its last
checkpoint and ends with the same history). A folder that cannot be read back stops the sweep with
``BrokenRun``; ``sweep(..., restart_broken=True)`` sets it aside as ``broken-<name>-<n>`` and trains it again.
Run labels are folder names: letters, digits and ``. _ = , + -``. ``summary(OUT)`` reads every history back into one
table: final accuracy, best accuracy, time and samples to reach a target accuracy, mean ± std over seeds. A
run that stopped dead or diverged is counted in ``failed`` and left out of the means, never averaged in.

The honest-baseline protocol tunes before it compares (``tune``, ``labkit tune``): each run spec trains at
every peak LR of a log-spaced grid on a validation split held out of the training set (the test split is not
loaded into those runs), with the same schedule and epoch budget; ``chosen.json`` keeps the best LR per spec
and ``sweep(..., lrs=chosen)`` trains the comparison with it. ``labkit.comparison`` reads the result:
reach times and ratios, comparison tables, and which differences the seeds can tell apart.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from labkit.pool import run_all
from labkit.runtime import atomic_path
from labkit.strategies.schedules import parse_milestones
from labkit.train import BrokenRun, Diverged, TrainConfig, fit


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
    return check_label(label, spec), name, params


LABEL = re.compile(r"[A-Za-z0-9._=,+-]+")


def check_label(label: str, spec: str | None = None) -> str:
    """A run label names a folder under the sweep's OUT: letters, digits and ``. _ = , + -`` only, not
    starting with a dot (so never a path, '.', '..' or a hidden folder)."""
    if not LABEL.fullmatch(label) or label.startswith("."):
        where = f"run {spec!r}: " if spec is not None and spec != label else ""
        raise ValueError(f"{where}label {label!r} is not allowed: a run label is a folder name made of letters, "
                         f"digits and . _ = , + - (not starting with a dot), e.g. 'big=fixed:b_init=1024'")
    return label


def _value(key: str, text: str):
    if key == "milestones":
        return parse_milestones(text)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def sweep(base: TrainConfig, runs: list[str], seeds: list[int], out: str | Path, progress: bool = True,
          lrs: dict[str, float] | None = None, stop_after: float | None = None,
          restart_broken: bool = False) -> pd.DataFrame:
    """Run every (run spec, seed) pair under ``out``; skip finished ones; return ``summary(out)``.

    ``lrs``: the peak LR per run label (``chosen.json`` of ``tune``); labels not in it train at ``base.lr``.
    ``stop_after``: start no new run after this many seconds (a rerun continues where this one stopped).
    ``restart_broken``: a run folder whose checkpoint, history or config cannot be read back (``BrokenRun``)
    is moved aside (to ``broken-<name>-<n>`` beside it) and trained again; without it the sweep stops there.
    """
    out = Path(out)
    jobs = [(folder, config) for folder, config in _plan(base, runs, seeds, out, lrs)
            if not _finished(folder, base.epochs, restart_broken)]
    start = time.perf_counter()
    for i, (folder, config) in enumerate(jobs):
        if stop_after is not None and time.perf_counter() - start > stop_after:
            print(f"stopped after {stop_after:g} s with {len(jobs) - i} runs left: run the same command again")
            break
        _run(config, folder, progress, restart_broken)
    return summary(out)


def _plan(base: TrainConfig, runs: list[str], seeds: list[int], out: Path, lrs: dict[str, float] | None):
    """(folder, config) of each (run spec, seed), in the order given."""
    for label, name, params in (parse_run(spec) for spec in runs):
        lr = base.lr if lrs is None else lrs.get(label, base.lr)
        for seed in seeds:
            yield out / label / f"seed{seed}", replace(base, strategy=name, strategy_params=params, seed=seed, lr=lr)


def _run(config: TrainConfig, folder: Path, progress: bool, restart_broken: bool = False) -> None:
    """One run into ``folder``, resumed from its checkpoint if it has one; a diverged or dead run keeps its
    history there and the sweep goes on. A broken folder is set aside and retrained with ``restart_broken``."""
    try:
        try:
            fit(config, folder, resume=True, progress=progress)
        except BrokenRun as error:
            if not restart_broken:
                raise
            set_aside(folder, error)
            fit(config, folder, resume=True, progress=progress)
    except Diverged as error:
        print(f"{folder}: {error}")


def _finished(folder: Path, epochs: int, restart_broken: bool) -> bool:
    try:
        return finished(folder, epochs)
    except BrokenRun as error:
        if not restart_broken:
            raise
        set_aside(folder, error)
        return False


def set_aside(folder: Path, error: BrokenRun | None = None) -> Path:
    """Move a broken run folder to ``broken-<name>-<n>`` beside it (kept for a look, out of every glob that
    reads results) and return the new path."""
    n = 1
    while (aside := folder.with_name(f"broken-{folder.name}-{n}")).exists():
        n += 1
    folder.rename(aside)
    print(f"{folder}: set aside as {aside.name} and trained again ({error})" if error else
          f"{folder}: set aside as {aside.name}")
    return aside


def finished(folder: Path, epochs: int) -> bool:
    """True when ``folder`` holds a complete history: all ``epochs`` rows, or a run that stopped itself
    (diverged or dead; its last reason starts with 'stopped:'). A history that cannot be read back whole
    (cut short, garbage) raises ``BrokenRun``."""
    history = folder / "history.csv"
    if not history.exists():
        return False
    rows = read_history(history)
    return len(rows) >= epochs or stopped(rows)


# the floats fit wrote, to the last bit (``labkit replay`` feeds them to a strategy again): pandas 3 reads them
# so by default (and deprecates the option), pandas 2 does not
EXACT = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def read_history(path: str | Path) -> pd.DataFrame:
    """A run's ``history.csv``, checked whole: a header with ``epoch`` and ``reason``, every row complete
    (each field present, numbers parseable) and ending in a newline, epochs 1, 2, 3, … Otherwise
    ``BrokenRun`` naming the file and what is wrong. Floats are read back exactly as written."""
    path = Path(path)
    try:
        text = path.read_text()
        lines = list(csv.reader(io.StringIO(text)))
        if not lines or not text.endswith("\n"):
            raise ValueError("it is empty" if not text else "its last line is cut short (no newline at the end)")
        header = lines[0]
        if "epoch" not in header or "reason" not in header:
            raise ValueError(f"its header {header[:4]}… has no 'epoch' and 'reason' columns")
        for number, line in enumerate(lines[1:], start=2):
            if len(line) != len(header):
                raise ValueError(f"line {number} has {len(line)} fields, the header {len(header)}")
            for column, field in zip(header, line):
                if column != "reason" and field:
                    float(field)              # ValueError names the field
        rows = pd.read_csv(io.StringIO(text), **EXACT)
        if list(rows.epoch) != list(range(1, len(rows) + 1)):
            raise ValueError(f"its epochs {list(rows.epoch)[:8]} are not 1, 2, 3, …")
    except (OSError, UnicodeDecodeError, ValueError, csv.Error, pd.errors.ParserError) as error:
        raise BrokenRun.of(path, "history", str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    return rows


def load_histories(out: str | Path) -> pd.DataFrame:
    """Every ``history.csv`` under ``out`` in one table, with ``run`` and ``seed`` columns."""
    frames = []
    for path in sorted(Path(out).glob("*/seed*/history.csv")):
        frame = read_history(path)
        frame.insert(0, "seed", int(path.parent.name.removeprefix("seed")))
        frame.insert(0, "run", path.parent.parent.name)
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no */seed*/history.csv under {out}: run a sweep there first")
    return pd.concat(frames, ignore_index=True)


STOPPED = "stopped:"     # how fit's last history row begins when a run stopped itself (dead or diverged)


def stopped(history: pd.DataFrame) -> bool:
    """True when one run's history ends in a row that ``fit`` wrote as it stopped the run."""
    return len(history) > 0 and str(history.sort_values("epoch").reason.iloc[-1]).startswith(STOPPED)


def failed(histories: pd.DataFrame) -> pd.Series:
    """Per (run, seed): True when the run stopped itself, dead (at chance) or diverged (NaN loss)."""
    reasons = histories.sort_values("epoch").groupby(["run", "seed"]).reason.last().astype(str)
    return reasons.str.startswith(STOPPED)


def summary(out: str | Path, target: float | None = None) -> pd.DataFrame:
    """Per run, mean ± std over its live seeds of: final and best test accuracy, training time, samples,
    steps, energy, and the time to first reach ``target`` accuracy (default: 0.99 × the lowest best accuracy
    of the live runs). ``seeds`` counts the live seeds, ``failed`` the dead or diverged ones, which are left
    out of every mean (a run whose seeds all failed has nan means)."""
    histories = load_histories(out)
    dead = failed(histories)
    best = histories.groupby(["run", "seed"]).test_acc.max()
    live_best = best[~dead.reindex(best.index, fill_value=False)]
    target = round(0.99 * (live_best if len(live_best) else best).min(), 4) if target is None else target
    rows = []
    for (run, seed), h in histories.groupby(["run", "seed"]):
        reached = h[h.test_acc >= target]
        energy = h.energy_j.iloc[-1] if "energy_j" in h else math.nan
        rows.append(dict(run=run, seed=seed, failed=bool(dead.get((run, seed), False)),
                         final_acc=h.test_acc.iloc[-1], best_acc=h.test_acc.max(),
                         final_loss=h.test_loss.iloc[-1], time_s=h.wall_time_s.iloc[-1],
                         samples=h.samples.iloc[-1], steps=h.steps.iloc[-1], energy_j=energy,
                         time_to_target_s=reached.wall_time_s.iloc[0] if len(reached) else math.nan,
                         final_batch=h.next_batch.iloc[-1]))
    per_seed = pd.DataFrame(rows)
    live = per_seed[~per_seed.failed]
    table = (live.drop(columns=["seed", "failed"]).groupby("run").agg(["mean", "std"])
             .reindex(per_seed.run.unique()))
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    table.insert(0, "failed", per_seed.groupby("run").failed.sum().astype(int))
    table.insert(0, "seeds", live.groupby("run").seed.count().reindex(table.index, fill_value=0).astype(int))
    table.index.name = "run"
    table.attrs["target"] = target
    return table.sort_values("final_acc_mean", ascending=False)


def log_grid(center: float, points: int = 5, factor: float = 2.0) -> list[float]:
    """``points`` values spaced by ``factor`` on a log scale around ``center``: 0.05 → 0.0125 … 0.2."""
    return [round(center * factor ** (k - (points - 1) / 2), 10) for k in range(points)]


def tune(base: TrainConfig, runs: list[str], lrs: list[float], out: str | Path, validation: float = 0.1,
         jobs: int = 1, progress: bool = True, stop_after: float | None = None,
         restart_broken: bool = False, widen: int = 0) -> pd.DataFrame:
    """The honest-baseline protocol's first half: each run spec at each peak LR of ``lrs``, trained with
    ``base``'s schedule and epoch budget on the training set less a held-out share ``validation``, and
    scored on that held-out share (``TrainConfig.validation``; the test split is never evaluated).

    Trials land in ``OUT/<label>/lr=<lr>/``; finished ones are skipped, so a tuning resumes. ``jobs`` > 1
    trains that many trials at once in separate processes: their scores are what counts, their times are
    not comparable and are not reported. Writes ``OUT/tune.csv`` (every trial: final and best validation
    accuracy, final validation loss, failed) and ``OUT/chosen.json`` ({label: best lr by final validation
    accuracy among the live trials}); returns the trial table. ``restart_broken`` as in ``sweep``.

    ``widen`` > 0: up to that many extra rounds, each adding one LR past every open end of a run's grid
    (``open_edges``), so no chosen LR is the best only because the grid stopped there.

    Interrupted with ``jobs`` > 1 (Ctrl-C, or SIGTERM as schedulers and ``timeout`` send it): the queued
    trials are cancelled and the running ones stopped at once (they resume from their last checkpoint), one
    line says how many finished, and ``KeyboardInterrupt`` (SIGINT) or ``SystemExit(143)`` (SIGTERM) follows.
    """
    if validation <= 0:
        raise ValueError(f"validation={validation:g}: tuning needs a held-out share of the training set in (0, 1)")
    out = Path(out)
    specs = {label: (name, params) for label, name, params in (parse_run(spec) for spec in runs)}

    def train(grid: dict[str, list[float]]) -> bool:
        trials = [(out / label / f"lr={lr:g}", replace(base, strategy=specs[label][0], strategy_params=specs[label][1],
                                                       lr=lr, validation=validation, seed=base.seed))
                  for label, lrs_of in grid.items() for lr in lrs_of]
        todo = [(config, folder, progress and jobs == 1, restart_broken) for folder, config in trials
                if not _finished(folder, base.epochs, restart_broken)]
        if todo and jobs > 1:
            run_all(_run, todo, jobs)
            return True
        start = time.perf_counter()
        for i, args in enumerate(todo):
            if stop_after is not None and time.perf_counter() - start > stop_after:
                print(f"stopped after {stop_after:g} s with {len(todo) - i} trials left: run the same command again")
                return False
            _run(*args)
        return True

    complete = train({label: list(lrs) for label in specs})
    for _ in range(widen if complete else 0):
        edges = {label: [lr] for label, lr in open_edges(tune_table(out)).items() if label in specs}
        if not edges:
            break
        print("widening the grid at its open ends: " + ", ".join(f"{k} lr={v[0]:g}" for k, v in edges.items()))
        if not train(edges):
            break
    table = tune_table(out)
    chosen = chosen_lrs(table)
    with atomic_path(out / "tune.csv") as partial:
        table.to_csv(partial, index=False)
    with atomic_path(out / "chosen.json") as partial:
        partial.write_text(json.dumps(chosen, indent=2) + "\n")
    return table


def tune_table(out: str | Path) -> pd.DataFrame:
    """Every finished trial under ``out`` (``OUT/<label>/lr=<lr>/history.csv``): label, lr, final and best
    validation accuracy, final validation loss, epochs run, failed."""
    rows = []
    for path in sorted(Path(out).glob("*/lr=*/history.csv")):
        h = read_history(path)
        rows.append(dict(label=path.parent.parent.name, lr=float(path.parent.name.removeprefix("lr=")),
                         val_acc=h.test_acc.iloc[-1], best_val_acc=h.test_acc.max(), val_loss=h.test_loss.iloc[-1],
                         epochs=int(h.epoch.iloc[-1]), failed=stopped(h)))
    if not rows:
        raise FileNotFoundError(f"no */lr=*/history.csv under {out}: run labkit tune there first")
    return pd.DataFrame(rows).sort_values(["label", "lr"], ignore_index=True)


def chosen_lrs(table: pd.DataFrame) -> dict[str, float]:
    """{label: the lr of the live trial with the highest final validation accuracy}; a label whose trials
    all failed is left out. A best lr at either end of the grid is worth a wider grid (the book says so)."""
    live = table[~table.failed]
    return {label: float(rows.lr.loc[rows.val_acc.idxmax()]) for label, rows in live.groupby("label")}


def open_edges(table: pd.DataFrame) -> dict[str, float]:
    """{label: the next LR to try} for each label whose chosen LR (``chosen_lrs``) is the smallest or the
    largest it tried: chosen / r or chosen × r, with r the smallest ratio between its neighbouring LRs
    (2 for a ×2 grid). A label that tried a single LR steps by r = 2."""
    edges = {}
    for label, best in chosen_lrs(table).items():
        tried = sorted(table.lr[table.label == label])
        ratio = min((b / a for a, b in zip(tried, tried[1:])), default=2.0)
        if best == tried[-1]:
            edges[label] = round(best * ratio, 10)
        elif best == tried[0]:
            edges[label] = round(best / ratio, 10)
    return edges


def short_commit(commit: str) -> str:
    """A recorded commit as the tables show it: 7 hex digits, a '+dirty' mark kept ('50520dedfb78+dirty'
    → '50520de+dirty'); a full or 12-digit hash and a short one of the same commit print alike."""
    head, plus, rest = commit.partition("+")
    return head[:7] + plus + rest


def provenance_counts(configs: list[str | Path]) -> pd.DataFrame:
    """Where runs ran: device, torch, labkit commit (``short_commit``) and day of each ``config.json``,
    counted."""
    rows = []
    for path in configs:
        p = json.loads(Path(path).read_text())["provenance"]
        rows.append({"device_name": p["device_name"], "torch": p["torch"], "commit": short_commit(p["commit"]),
                     "day": p["date"][:10]})
    return pd.DataFrame(rows).value_counts().rename("runs").reset_index()


def ran_at(folder: str | Path) -> pd.Series:
    """Where each run of a sweep folder ran: its label → 'day commit' of its seeds (several, comma-joined,
    when its seeds ran at different commits or days), read from ``RUN/seed*/config.json``."""
    ran = {}
    for path in sorted(Path(folder).glob("*/seed*/config.json")):
        p = json.loads(path.read_text())["provenance"]
        ran.setdefault(path.parent.parent.name, {})[f"{p['date'][:10]} {short_commit(p['commit'])}"] = None
    return pd.Series({run: ", ".join(where) for run, where in ran.items()}, name="ran", dtype=object)


def decision_trail(decisions: pd.DataFrame) -> pd.DataFrame:
    """A strategy's ``decisions.csv`` (step, old, new, reason) shortened: consecutive rows with the same
    (old, new, reason) become one row whose ``steps`` is 'first–last' (or the one step). Columns: steps,
    old, new, reason, in the order of the log. Chapter: Conclusions."""
    keys = decisions[["old", "new", "reason"]]
    block = (keys != keys.shift()).any(axis=1).cumsum()

    def span(s):
        return f"{s.iloc[0]}–{s.iloc[-1]}" if len(s) > 1 else f"{s.iloc[0]}"

    return decisions.groupby(block).agg(steps=("step", span), old=("old", "first"), new=("new", "first"),
                                        reason=("reason", "first")).reset_index(drop=True)


def portable_command(command: str) -> str:
    """A recorded command without the machine's directories: '/root/out/results/x.csv' → 'results/x.csv',
    'python3 /work/main/bench/sequence.py' → 'python3 bench/sequence.py' (any absolute path is cut back to
    its first part named results, bench, labkit or notebooks; other absolute paths to their file name)."""
    def cut(match: re.Match) -> str:
        parts = match.group(0).split("/")
        for i, part in enumerate(parts):
            if part in ("results", "bench", "labkit", "notebooks"):
                return "/".join(parts[i:])
        return parts[-1]
    return re.sub(r"(?<![\w.])/[^\s'\"]+", cut, command)
