"""Faults: a run killed at any moment resumes to the same history, nothing lost; a broken or foreign run
folder is one clear error; a resume with other settings is refused; a NaN per-step loss stops as Diverged.

The kill tests start real ``python -m labkit`` processes (digits, mlp, CPU) and ``kill -9`` them: mid-epoch,
right after a history row is written (before its checkpoint), and again after a resume. The reference is
the same command run uninterrupted (in this process, through ``labkit.cli.main``).
"""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from labkit.cli import main
from labkit.experiments import finished, parse_run, read_history, sweep
from labkit.train import BrokenRun, Diverged, TrainConfig, fit

TIMING = ["epoch_time_s", "wall_time_s", "samples_per_s", "energy_j"]
TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--device", "cpu", "--epochs", "8", "--b-init", "64",
         "--no-progress"]
SWEEP = ["sweep", "--dataset", "digits", "--model", "mlp", "--device", "cpu", "--epochs", "2", "--seeds", "0",
         "--runs", "fixed:b_init=64", "linear:b_init=32,a=16", "--no-progress"]


def rows(path: Path) -> int:
    try:
        return len(read_history(path))
    except (BrokenRun, FileNotFoundError):
        return 0


def start(argv: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "labkit", *argv, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, history: list[Path], *, grown_past: int, delay: float = 0.0) -> bool:
    """Wait until the histories hold more than ``grown_past`` rows in all, then ``delay`` s, then kill -9.
    False when the process ended first (nothing left to kill)."""
    deadline = time.monotonic() + 60
    while sum(rows(h) for h in history) <= grown_past:
        if process.poll() is not None:
            assert process.returncode == 0, process.stderr.read()
            return False
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return True


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err


def same(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(read_history(a).drop(columns=TIMING), read_history(b).drop(columns=TIMING))


@pytest.mark.slow
def test_train_killed_three_times_resumes_to_the_same_history(tmp_path):
    assert main([*TRAIN, "--out", str(tmp_path / "whole")]) == 0
    out, history = tmp_path / "killed", [tmp_path / "killed" / "history.csv"]
    kills = 0
    # 1: the moment the first row is written (its checkpoint may not be yet); 2: mid-epoch, after a resume;
    # 3: the moment the next row is written, after another resume
    for delay, resume in ((0.0, []), (0.05, ["--resume"]), (0.0, ["--resume"])):
        kills += kill_when(start([*TRAIN, *resume], out), history, grown_past=rows(history[0]), delay=delay)
    finish(start([*TRAIN, "--resume"], out))
    assert kills == 3
    same(out / "history.csv", tmp_path / "whole" / "history.csv")          # identical, 0 rows lost


@pytest.mark.slow
def test_sweep_killed_twice_resumes_to_the_same_histories(tmp_path):
    assert main([*SWEEP, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "killed"
    history = [out / "fixed-b_init=64" / "seed0" / "history.csv", out / "linear-b_init=32-a=16" / "seed0" / "history.csv"]
    kills = kill_when(start(SWEEP, out), history, grown_past=0, delay=0.0)              # after run 1's first row
    kills += kill_when(start(SWEEP, out), history, grown_past=2, delay=0.0)             # after run 2's first row
    finish(start(SWEEP, out))
    assert kills == 2
    for h in history:
        same(h, tmp_path / "whole" / h.relative_to(out))
    assert (out / "summary.csv").exists()


# -- in process: refused resumes, broken folders ---------------------------------------------------------

BASE = TrainConfig(dataset="digits", model="mlp", strategy="fixed", strategy_params={"b_init": 128}, epochs=2,
                   device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished two-epoch run, copied fresh for each test."""
    folder = tmp_path_factory.mktemp("run") / "seed0"
    fit(BASE, folder, progress=False)
    return folder


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil
    return Path(shutil.copytree(run, tmp_path / "seed0"))


@pytest.mark.parametrize("change, words", [
    (dict(dataset="mnist1d"), "dataset='digits' there, 'mnist1d' here"),
    (dict(strategy="linear"), "strategy='fixed' there, 'linear' here"),
    (dict(strategy_params={"b_init": 64}), "strategy_params"),
    (dict(seed=1, lr=0.1), "lr, seed (lr=0.05 there, 0.1 here; seed=0 there, 1 here)"),
    (dict(epochs=3), "epochs=2 there, 3 here"),
    (dict(optimizer="adam", lr_schedule="cosine"), "lr_schedule, optimizer"),
])
def test_resume_with_other_settings_is_refused_before_anything_is_written(run, tmp_path, change, words):
    folder = copy_of(run, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError, match="cannot resume") as info:
        fit(TrainConfig(**{**BASE.__dict__, **change}), folder, resume=True, progress=False)
    assert words in str(info.value)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_resume_in_the_other_quick_mode_is_refused(run, tmp_path):
    from labkit.runtime import quick_mode
    folder = copy_of(run, tmp_path)
    with pytest.raises(ValueError, match=f"differs in quick \\(quick={quick_mode()} there"):
        fit(TrainConfig(**{**BASE.__dict__, "quick": not quick_mode()}), folder, resume=True, progress=False)


def test_resume_may_change_where_it_runs(run, tmp_path):
    folder = copy_of(run, tmp_path)
    history = fit(TrainConfig(**{**BASE.__dict__, "eval_batch": 100}), folder, resume=True, progress=False)
    assert len(history) == 2


def _foreign_weights(path):
    torch.save({"model": {"weight": torch.zeros(3)}}, path)


BROKEN = {
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(b"not a checkpoint at all"),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "foreign pickle": lambda p: p.write_bytes(__import__("pickle").dumps({"model": object})),
    "other weights": _foreign_weights,
}


@pytest.mark.parametrize("damage", BROKEN)
def test_a_broken_checkpoint_is_one_clear_error(run, tmp_path, damage):
    folder = copy_of(run, tmp_path)
    BROKEN[damage](folder / "checkpoint.pt")
    with pytest.raises(BrokenRun) as info:
        fit(BASE, folder, resume=True, progress=False)
    text = str(info.value)
    assert "checkpoint.pt is not a readable checkpoint" in text and "--restart-broken" in text
    assert info.value.path == folder / "checkpoint.pt"


def test_a_checkpoint_of_another_model_is_broken(run, tmp_path):
    folder = copy_of(run, tmp_path)
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    state["model"] = {k + "x": v for k, v in state["model"].items()}
    torch.save(state, folder / "checkpoint.pt")
    with pytest.raises(BrokenRun, match="not a readable checkpoint"):
        fit(BASE, folder, resume=True, progress=False)


@pytest.mark.parametrize("counters, resumes", [
    (lambda c: [c["epoch"], c["step"], c["samples"], c["wall"], c["energy"]], True),   # the list saved before 2026-12
    (lambda c: [c["epoch"], c["step"], c["samples"], c["wall"]], False),
    (lambda c: {**c, "epochs": 2}, False),
    (lambda c: {**c, "epoch": 1}, False),                                               # 2 history rows
])
def test_checkpoint_counters_old_and_broken(run, tmp_path, counters, resumes):
    folder = copy_of(run, tmp_path)
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["counters"]["epoch"] == 2 and state["counters"]["samples"] == state["history"][-1]["samples"]
    state["counters"] = counters(state["counters"])
    torch.save(state, folder / "checkpoint.pt")
    if resumes:
        history = fit(BASE, folder, resume=True, progress=False)
        pd.testing.assert_frame_equal(history, read_history(folder / "history.csv"))
        return
    with pytest.raises(BrokenRun, match="checkpoint.pt is not a readable checkpoint .*counters"):
        fit(BASE, folder, resume=True, progress=False)


@pytest.mark.parametrize("damage, words", [
    (lambda t: t[: len(t) - 5], "cut short"),
    (lambda t: t.rsplit("\n", 2)[0] + "\n2,64.0\n", "fields"),
    (lambda t: "", "empty"),
    (lambda t: t.replace("\n2,", "\n2x,"), "2x"),
])
def test_a_half_written_history_is_broken_and_a_sweep_can_restart_it(run, tmp_path, damage, words):
    folder = copy_of(run, tmp_path / "fixed")
    history = folder / "history.csv"
    history.write_text(damage(history.read_text()))
    with pytest.raises(BrokenRun, match=words):
        finished(folder, 2)
    if words != "cut short":
        return                  # one damage is enough to check what a sweep does with it
    base = TrainConfig(**{**BASE.__dict__, "strategy_params": {}})
    with pytest.raises(BrokenRun, match="history.csv is not a readable history"):
        sweep(base, ["fixed=fixed:b_init=128"], [0], tmp_path, progress=False)
    table = sweep(base, ["fixed=fixed:b_init=128"], [0], tmp_path, progress=False, restart_broken=True)
    assert table.loc["fixed", "seeds"] == 1 and finished(folder, 2)
    assert (folder.parent / "broken-seed0-1" / "history.csv").exists()


def test_sweep_restarts_a_broken_checkpoint_only_when_asked(run, tmp_path):
    folder = copy_of(run, tmp_path / "fixed")
    (folder / "checkpoint.pt").write_bytes(b"")
    history = read_history(folder / "history.csv")
    (folder / "history.csv").write_text(history.iloc[:1].to_csv(index=False))    # unfinished: it resumes
    base = TrainConfig(**{**BASE.__dict__, "strategy_params": {}})
    with pytest.raises(BrokenRun, match="checkpoint.pt is not a readable checkpoint"):
        sweep(base, ["fixed=fixed:b_init=128"], [0], tmp_path, progress=False)
    sweep(base, ["fixed=fixed:b_init=128"], [0], tmp_path, progress=False, restart_broken=True)
    pd.testing.assert_frame_equal(read_history(folder / "history.csv").drop(columns=TIMING),
                                  history.drop(columns=TIMING))


def test_a_nan_loss_per_step_stops_as_diverged_with_the_history_kept(tmp_path):
    config = TrainConfig(dataset="digits", model="mlp", strategy="loss", strategy_params={"b_init": 64},
                         decide_every="step", epochs=3, lr=1e12, device="cpu")
    with pytest.raises(Diverged, match="not finite|diverged") as info:
        fit(config, tmp_path, progress=False)
    last = info.value.history.iloc[-1]
    assert last.reason == "stopped: loss is not finite" and not math.isfinite(last.train_loss)
    assert read_history(tmp_path / "history.csv").reason.iloc[-1] == "stopped: loss is not finite"


# -- labels are folder names, never paths ---------------------------------------------------------------

@pytest.mark.parametrize("spec", ["../x=fixed", "a/b=fixed", ".=fixed", "..=fixed", ".hidden=fixed", "a b=fixed",
                                  "x;y=fixed", "fixed:b_init=6/4", "fixed:b_init=64,delta=a b"])
def test_a_label_that_could_be_a_path_is_refused(spec):
    with pytest.raises(ValueError, match="label .* is not allowed: a run label is a folder name"):
        parse_run(spec)


@pytest.mark.parametrize("spec", ["loss:b_init=64,delta=ema,alpha=0.3", "epoch:b_init=32,milestones=5>128;10>256",
                                  "linear:b_init=32,a=-16", "exponential:a=1e+300", "big.one=fixed:b_init=1024",
                                  "cyclical:mode=cosine,period=4"])
def test_every_auto_label_passes(spec):
    label, _, _ = parse_run(spec)
    assert "/" not in label and not label.startswith(".")
