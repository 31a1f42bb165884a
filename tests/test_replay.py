"""`labkit replay RUN`: a run's batch-size decisions rebuilt from its config.json and history.csv alone.

The committed goodput baselines (trained on a GPU) and short CPU runs of digits must replay exactly; a tampered
history must show the difference (exit code 1); a per-step run or a missing folder is bad input: one line and
exit code 2, no traceback."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from labkit.cli import main
from labkit.replay import replay, signals, verdict
from labkit.train import TrainConfig, fit

ROOT = Path(__file__).resolve().parent.parent
GOODPUT_RUNS = sorted(ROOT.glob("results/baselines/*/goodput*/seed*"))
BASE = TrainConfig(dataset="digits", model="mlp", epochs=3, lr=0.05, quick=False, device="cpu",
                   strategy="loss", strategy_params={"b_init": 32, "min_batch": 16, "max_batch": 256,
                                                     "delta": "ema", "alpha": 0.5})


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``labkit ARGV`` run in this process."""
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def loss_run(tmp_path_factory):
    """A finished 3-epoch run of the loss strategy on digits, on the CPU."""
    folder = tmp_path_factory.mktemp("loss") / "run"
    torch.manual_seed(0)
    fit(BASE, folder, progress=False)
    return folder


# -- (a) the committed goodput runs -------------------------------------------------------------------------

def test_the_committed_goodput_runs_are_there():
    assert len(GOODPUT_RUNS) >= 18, GOODPUT_RUNS


@pytest.mark.parametrize("folder", GOODPUT_RUNS, ids=[str(p.relative_to(ROOT / "results/baselines"))
                                                      for p in GOODPUT_RUNS])
def test_a_committed_goodput_run_replays_exactly(folder):
    table = replay(folder)
    history = pd.read_csv(folder / "history.csv")
    assert len(table) == len(history) > 0
    assert table["replayed"].tolist() == history["next_batch"].astype(int).tolist()
    assert table["same"].all()
    assert table["replayed_reason"].tolist() == history["reason"].tolist()    # the same numbers, to 3 digits
    assert table.attrs["strategy"] == "goodput"
    assert verdict(table).startswith(f"replayed {len(history)} decisions of goodput: all match the log")
    assert "memory" in verdict(table)                 # goodput reads memory, which these runs do not log
    moves = table[table["next_batch"] != table["batch_size"]]
    assert not moves.empty                            # the batch did move: there is something to explain


def test_step_time_is_the_epoch_time_over_its_own_steps():
    history = pd.DataFrame({"epoch": [1, 2], "steps": [10, 15], "epoch_time_s": [2.0, 1.0], "gns": [float("nan"), 5.0],
                            "train_loss": [1.0, 0.5], "train_entropy": [2.0, 1.5], "peak_mem_mb": [100.0, 50.0]})
    assert signals(history) == [{"loss": 1.0, "entropy": 2.0, "epoch": 1, "step_time": 0.2},
                                {"loss": 0.5, "entropy": 1.5, "epoch": 2, "step_time": 0.2, "gns": 5.0}]
    assert [s["memory"] for s in signals(history, memory_budget_mb=200.0)] == [0.5, 0.25]


# -- (b) a fresh run on the CPU -------------------------------------------------------------------------

def test_a_loss_run_replays_exactly_and_the_cli_says_so(loss_run, capsys, tmp_path):
    history = pd.read_csv(loss_run / "history.csv")
    table = replay(loss_run)
    assert table["replayed"].tolist() == history["next_batch"].tolist()
    assert table["reason"].tolist() == history["reason"].tolist()
    assert table["replayed_reason"].tolist() == history["reason"].tolist()    # the same Δ, to 3 digits
    assert table.attrs["caveat"] == ""
    assert (table["batch_size"].iloc[1:].to_numpy() != table["batch_size"].iloc[0]).any()  # ema grew the batch
    code, out, err = run_cli(["replay", loss_run, "--csv", tmp_path / "replay.csv"], capsys)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[-1] == "replayed 3 decisions of loss: all match the log"
    assert "loss" in lines[0] and "entropy" not in lines[0]          # only the signals the strategy reads
    assert history["reason"].iloc[-1] in out
    written = pd.read_csv(tmp_path / "replay.csv")
    assert written["replayed"].tolist() == history["next_batch"].tolist() and written["same"].all()


def test_a_memory_run_with_a_budget_replays_with_the_caveat(tmp_path):
    from labkit.memory import StepMemory
    from labkit.models import build_model

    budget_mb = StepMemory.of(build_model("mlp", (1, 8, 8), 10), torch.zeros(1, 1, 8, 8))(600) / 2**20  # 600 fit
    config = TrainConfig(**{**BASE.__dict__, "strategy": "memory", "memory_budget_mb": budget_mb,
                            "strategy_params": {"b_init": 32, "min_batch": 8, "max_batch": 1024}})
    fit(config, tmp_path / "run", progress=False)
    table = replay(tmp_path / "run")
    assert table["same"].all(), table
    assert table["memory"].notna().all()
    assert "peak_mem_mb / memory_budget_mb" in verdict(table)


# -- (c) a tampered history -------------------------------------------------------------------------------

def test_a_tampered_decision_is_found(loss_run, tmp_path, capsys):
    folder = tmp_path / "run"
    shutil.copytree(loss_run, folder)
    history = pd.read_csv(folder / "history.csv")
    history.loc[1, "next_batch"] += 16                               # epoch 2 "chose" another batch
    history.to_csv(folder / "history.csv", index=False)
    table = replay(folder)
    assert table["same"].tolist() == [True, False, True]
    assert verdict(table) == "replayed 3 decisions of loss: 1 of 3 differ from the log (first at epoch 2)"
    code, out, err = run_cli(["replay", folder], capsys)
    assert code == 1 and err == ""
    assert out.strip().splitlines()[-1].endswith("1 of 3 differ from the log (first at epoch 2)")
    assert "DIFFERS" in out
    assert f"epoch 2: the log chose {history.loc[1, 'next_batch']}" in out


def test_a_tampered_signal_is_found(loss_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(loss_run, folder)
    history = pd.read_csv(folder / "history.csv")
    history.loc[1, "train_loss"] = history.loc[0, "train_loss"] * 2   # the loss "rose": ema shrinks, not grows
    history.to_csv(folder / "history.csv", index=False)
    assert not replay(folder)["same"].all()


# -- (d) what cannot be replayed ---------------------------------------------------------------------------

def _per_step_run(folder: Path) -> Path:
    folder.mkdir()
    config = {**BASE.__dict__, "decide_every": "step"}
    (folder / "config.json").write_text(json.dumps({"config": config, "provenance": {}}))
    (folder / "history.csv").write_text("epoch,batch_size,steps,train_loss,train_entropy,epoch_time_s,next_batch,"
                                        "reason\n1,32,40,1.0,2.0,0.5,64,grow\n")
    return folder


def test_a_per_step_run_is_a_value_error_and_exit_2(tmp_path, capsys):
    folder = _per_step_run(tmp_path / "per-step")
    with pytest.raises(ValueError, match="decide_every='step'"):
        replay(folder)
    code, out, err = run_cli(["replay", folder], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("labkit replay: error:") and "decided every step" in err


@pytest.mark.parametrize("what", ["no folder", "no history", "no config", "garbage config", "a file"])
def test_bad_input_is_one_line_and_exit_2(what, loss_run, tmp_path, capsys):
    folder = tmp_path / "run"
    if what != "no folder":
        shutil.copytree(loss_run, folder)
    if what == "no history":
        (folder / "history.csv").unlink()
    if what == "no config":
        (folder / "config.json").unlink()
    if what == "garbage config":
        (folder / "config.json").write_text("{not json")
    if what == "a file":
        folder = folder / "history.csv"
    code, out, err = run_cli(["replay", folder], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith("labkit replay: error:"), err
    assert str(folder) in err


def test_in_a_separate_process_a_missing_folder_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "replay", str(tmp_path / "nowhere")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"{tmp_path / 'nowhere'}: no such run folder" in done.stderr


def test_a_committed_per_step_run_is_refused(capsys):
    folder = ROOT / "results" / "memory" / "cifar10-resnet"
    if not (folder / "config.json").is_file():
        pytest.skip("results/memory/cifar10-resnet is not committed here")
    code, _, err = run_cli(["replay", folder], capsys)
    assert code == 2 and "decide_every='step'" in err
