"""Bad input on the command line ends in one line on stderr, never a traceback: exit code 2 for an argument
(`labkit CMD: error: ...`, as argparse), 1 for a run that stops (diverged, out of memory, a broken checkpoint,
a failed write), 130 for Ctrl-C; `labkit --debug CMD ...` shows the traceback instead.

Most cases run `labkit.cli.main` in-process (fast); a few run `python -m labkit.cli` to show that nothing
else reaches stderr. A bad argument must stop the command before any work; the cases that need a run folder
train one epoch of digits on the CPU, and the runtime stops replace `fit` by one that raises."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from labkit import train
from labkit.cli import main
from labkit.memory import MemoryCapExceeded

RUN = ["--dataset", "digits", "--model", "mlp", "--epochs", "1", "--device", "cpu", "--no-progress"]
TRAIN = ["train", *RUN, "--out", "{tmp}/out"]
SWEEP = ["sweep", *RUN, "--out", "{tmp}/out"]
TUNE = ["tune", *RUN, "--out", "{tmp}/out"]
FIND = ["find-batch", "--dataset", "digits", "--device", "cpu", "--quick"]
SERVE = ["serve-bench", "--quick", "--device", "cpu", "--out", "{tmp}/bench.csv"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

BAD_ARGUMENTS = [   # (arguments, words the line must hold); each ends with exit code 2
    # the command itself
    (["warp"], "invalid choice: 'warp'"),
    ([], "required: command"),
    (["train", "--out", "{tmp}/out", "--epochs", "x"], "invalid int value: 'x'"),
    # train: strategies
    ([*TRAIN, "--strategy", "warp"], "invalid choice: 'warp'"),
    ([*TRAIN, "--strategy", "linear", "--alpha", "0.5"], "takes no parameter 'alpha'"),
    ([*TRAIN, "--strategy", "epoch", "--milestones", "5-128"], "milestones='5-128'"),
    ([*TRAIN, "--strategy", "epoch", "--milestones", "5:128,10:256"], "expected EPOCH>BATCH pairs joined by ';'"),
    ([*TRAIN, "--strategy", "epoch", "--milestones", "5>x"], "milestones='5>x'"),
    ([*TRAIN, "--b-init", "0"], "b_init=0"),
    ([*TRAIN, "--strategy", "loss", "--alpha", "2"], "alpha=2"),
    # train: the device
    ([*TRAIN, "--device", "tpu"], "device='tpu'"),
    ([*TRAIN, "--device", "CPU"], "device='CPU'"),
    pytest.param([*TRAIN, "--device", "cuda"], "device='cuda'", marks=NO_CUDA),
    pytest.param([*TRAIN, "--device", "cuda:7"], "device='cuda:7'", marks=NO_CUDA),
    # train: the output folder
    (["train", *RUN, "--out", "{tmp}/a-file"], "--out {tmp}/a-file is a file"),
    (["train", *RUN, "--out", "{tmp}/a-file/sub"], "{tmp}/a-file/sub"),
    # train: names and numbers
    ([*TRAIN, "--dataset", "imagenet"], "'imagenet'"),
    ([*TRAIN, "--model", "warp"], "'warp'"),
    ([*TRAIN, "--epochs", "0"], "epochs=0"),
    ([*TRAIN, "--base-batch", "0"], "--base-batch=0"),
    ([*TRAIN, "--lr", "-1"], "lr=-1"),
    ([*TRAIN, "--lr", "nan"], "lr=nan"),
    ([*TRAIN, "--lr-warmup", "-1"], "lr_warmup=-1"),
    ([*TRAIN, "--seed", "-1"], "--seed=-1"),
    ([*TRAIN, "--eval-batch", "0"], "--eval-batch=0"),
    ([*TRAIN, "--label-smoothing", "1"], "label_smoothing=1"),
    ([*TRAIN, "--validation", "1.5"], "validation=1.5"),
    ([*TRAIN, "--memory-budget-mb", "0"], "memory_budget_mb=0"),
    ([*TRAIN, "--gns-every", "-2"], "gns_every=-2"),
    ([*TRAIN, "--curriculum", "{tmp}/nowhere"], "{tmp}/nowhere"),
    # sweep
    ([*SWEEP, "--runs", "warp"], "unknown strategy 'warp'"),
    ([*SWEEP, "--runs", "fixed:b_init"], "'b_init' is not KEY=VALUE"),
    ([*SWEEP, "--runs", "linear:alpha=0.3"], "takes no parameter 'alpha'"),
    ([*SWEEP, "--runs", "epoch:milestones=5>x"], "milestones=5>x"),
    ([*SWEEP, "--runs", "a/b=fixed"], "a/b"),
    ([*SWEEP, "--runs", "..=fixed"], ".."),
    ([*SWEEP, "--runs", "fixed", "--seeds", "0", "-1"], "--seeds=-1"),
    ([*SWEEP, "--runs", "fixed", "--stop-after", "-1"], "--stop-after=-1"),
    ([*SWEEP, "--runs", "fixed", "--tuned", "{tmp}/nowhere"], "--tuned {tmp}/nowhere: no chosen.json"),
    ([*SWEEP, "--runs", "fixed", "--tuned", "{tmp}/bad-tune"], "chosen.json is not JSON"),
    (["sweep", *RUN, "--runs", "fixed", "--out", "{tmp}/a-file"], "is a file"),
    # tune
    ([*TUNE, "--runs", "fixed", "--lrs", "0"], "--lrs 0.0"),
    ([*TUNE, "--runs", "fixed", "--lrs", "0.1", "-0.1"], "--lrs=-0.1"),
    ([*TUNE, "--runs", "fixed", "--jobs", "0"], "--jobs=0"),
    ([*TUNE, "--runs", "fixed", "--validation", "0"], "validation=0"),
    ([*TUNE, "--runs", "../up=fixed"], "../up"),
    ([*TUNE, "--runs", "fixed", "--device", "tpu"], "device='tpu'"),
    # find-batch
    ([*FIND, "--min-batch", "512", "--max-batch", "64"], "--min-batch 512 is larger than --max-batch 64"),
    ([*FIND, "--device", "tpu"], "device='tpu'"),
    ([*FIND, "--base-batch", "0"], "--base-batch=0"),
    ([*FIND, "--max-batch", "0"], "--max-batch=0"),
    ([*FIND, "--gns-steps", "0"], "gns_steps=0"),
    ([*FIND, "--memory-cap", "-1"], "--memory-cap=-1"),
    ([*FIND, "--out", "{tmp}/a-file"], "is a file"),
    # serve-bench
    ([*SERVE, "--burst", "0"], "--burst=0"),
    ([*SERVE, "--duration", "0"], "--duration=0"),
    ([*SERVE, "--clients", "0"], "--clients=0"),
    ([*SERVE, "--windows", "-1"], "windows=-1"),
    ([*SERVE, "--max-batch", "0"], "--max-batch=0"),
    ([*SERVE, "--target-p99-ms", "0"], "--target-p99-ms=0"),
    ([*SERVE, "--load", "0"], "load=0"),
    ([*SERVE, "--device", "tpu"], "device='tpu'"),
    (["serve-bench", "--quick", "--device", "cpu", "--out", "{tmp}"], "is a folder"),
    (["serve-bench", "--quick", "--device", "cpu", "--out", "{tmp}/a-file/bench.csv"], "{tmp}/a-file"),
]

BROKEN_CHECKPOINTS = {   # name → how to spoil OUT/checkpoint.pt of a finished run; --resume stops with exit code 1
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:300]),
    "empty": lambda path: path.write_bytes(b""),
    "garbage": lambda path: path.write_bytes(bytes(range(256)) * 4),
    "text": lambda path: path.write_text("epoch,loss\n1,0.5\n"),
    "a list": lambda path: torch.save([1, 2, 3], path),
    "foreign": lambda path: torch.save({"model": {}, "history": []}, path),
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A folder holding a real one-epoch run of TRAIN: history.csv, config.json, checkpoint.pt."""
    folder = tmp_path_factory.mktemp("finished")
    assert main([arg.replace("{tmp}", str(folder)) for arg in TRAIN]) == 0
    return folder / "out"


@pytest.fixture
def tmp(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "bad-tune").mkdir()
    (tmp_path / "bad-tune" / "chosen.json").write_text('{"fixed": 0.1')        # cut short
    return tmp_path


def run(argv: list[str], tmp, capsys) -> tuple[int, str]:
    """(exit code, stderr) of ``labkit ARGV`` run in this process."""
    try:
        code = main([arg.replace("{tmp}", str(tmp)) for arg in argv])
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def assert_one_line(err: str, words: str, tmp) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and err.startswith("labkit"), err
    assert words.replace("{tmp}", str(tmp)) in err, err


@pytest.mark.parametrize("argv, words", BAD_ARGUMENTS)
def test_a_bad_argument_is_one_line_and_exit_2(argv, words, tmp, capsys):
    code, err = run(argv, tmp, capsys)
    assert code == 2
    assert_one_line(err, words, tmp)
    assert not (tmp / "out" / "history.csv").exists() and not (tmp / "bench.csv").exists()   # no work done


@pytest.mark.parametrize("command", ["train", "sweep", "tune"])
def test_out_under_a_read_only_folder_is_one_line(command, tmp, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders (the cases under a file cover it)")
    locked = tmp / "locked"
    locked.mkdir(mode=0o500)
    try:
        code, err = run([command, *RUN, *([] if command == "train" else ["--runs", "fixed"]),
                         "--out", str(locked / "out")], tmp, capsys)
    finally:
        locked.chmod(0o700)
    assert code == 2
    assert_one_line(err, str(locked / "out"), tmp)


@pytest.mark.parametrize("kind", BROKEN_CHECKPOINTS)
def test_resume_from_a_broken_checkpoint_is_one_line_naming_the_file(kind, finished_run, tmp, capsys):
    shutil.copytree(finished_run, tmp / "out")
    BROKEN_CHECKPOINTS[kind](tmp / "out" / "checkpoint.pt")
    code, err = run([*TRAIN, "--resume"], tmp, capsys)
    assert code == 1
    assert_one_line(err, str(tmp / "out" / "checkpoint.pt"), tmp)


def test_resume_with_a_checkpoint_but_no_config_is_one_line(finished_run, tmp, capsys):
    shutil.copytree(finished_run, tmp / "out")
    (tmp / "out" / "config.json").unlink()
    code, err = run([*TRAIN, "--resume"], tmp, capsys)
    assert code == 1
    assert_one_line(err, str(tmp / "out" / "config.json"), tmp)


def test_a_sweep_stops_at_a_broken_run_in_one_line_and_restarts_it_when_told(tmp, capsys):
    sweep = [*SWEEP, "--runs", "fixed"]
    assert run(sweep, tmp, capsys)[0] == 0
    history = tmp / "out" / "fixed" / "seed0" / "history.csv"
    history.write_bytes(history.read_bytes()[:-5])                            # a write cut short
    code, err = run(sweep, tmp, capsys)
    assert code == 1
    assert_one_line(err, f"{history}", tmp)
    assert "--restart-broken" in err
    assert run([*sweep, "--restart-broken"], tmp, capsys)[0] == 0


def _raising(error: BaseException):
    def fit(*args, **kwargs):
        raise error
    return fit


STOPS = [   # (what fit raises, exit code, words)
    (train.Diverged("the loss is nan at epoch 3: lower lr", pd.DataFrame()), 1, "the loss is nan at epoch 3"),
    (train.DeadRun("the run is dead at epoch 2: at chance", pd.DataFrame()), 1, "the run is dead at epoch 2"),
    (MemoryCapExceeded("a step needed 2.0 GiB, above the cap of 1.0 GiB"), 1, "above the cap"),
    (OSError(errno.ENOSPC, "No space left on device", "out/history.csv"), 1, "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "out/checkpoint.pt"), 1, "Permission denied"),
    (RuntimeError("a step failed\nwith a second line"), 1, "unexpected error: RuntimeError: a step failed with"),
    (ZeroDivisionError("division by zero"), 1, "run `labkit --debug train ...` for the traceback"),
    (KeyboardInterrupt(), 130, "interrupted; rerun with --resume"),
]


@pytest.mark.parametrize("error, code, words", STOPS, ids=[type(error).__name__ for error, *_ in STOPS])
def test_a_run_that_stops_is_one_line(error, code, words, tmp, capsys, monkeypatch):
    monkeypatch.setattr(train, "fit", _raising(error))
    stopped, err = run(TRAIN, tmp, capsys)
    assert stopped == code
    assert_one_line(err, words, tmp)


def test_debug_lets_the_error_through(tmp, monkeypatch):
    monkeypatch.setattr(train, "fit", _raising(ZeroDivisionError("division by zero")))
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *(arg.replace("{tmp}", str(tmp)) for arg in TRAIN)])
    with pytest.raises(ValueError, match="device='tpu'"):
        main(["--debug", "serve-bench", "--device", "tpu", "--out", str(tmp / "x.csv")])


# -- as a user runs it: a separate process, where any traceback would reach stderr ------------------------

@pytest.mark.parametrize("argv, code, words", [
    (["train", *RUN, "--device", "tpu", "--out", "{tmp}/out"], 2, "labkit train: error: device='tpu'"),
    (["serve-bench", "--quick", "--device", "cpu", "--burst", "0", "--out", "{tmp}/x.csv"], 2, "--burst=0"),
    ([*TRAIN, "--resume"], 1, "{tmp}/out/checkpoint.pt is not a readable checkpoint"),
])
def test_in_a_separate_process_stderr_is_one_line(argv, code, words, finished_run, tmp):
    shutil.copytree(finished_run, tmp / "out")
    BROKEN_CHECKPOINTS["truncated"](tmp / "out" / "checkpoint.pt")
    done = subprocess.run([sys.executable, "-m", "labkit.cli", *(a.replace("{tmp}", str(tmp)) for a in argv)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == code
    assert_one_line(done.stderr, words, tmp)


def test_debug_in_a_separate_process_shows_the_traceback(tmp):
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "--debug", "train", *RUN, "--device", "tpu",
                           "--out", str(tmp / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "device='tpu'" in done.stderr


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`labkit replay RUN | head -1`: stdout's pipe closes under the command, which stops with exit 1 and says
    nothing on stderr (no "[Errno 32] Broken pipe" line, no "Exception ignored" at exit)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run_folder = os.path.join(repo, "results", "baselines", "cifar10-jpeg-resnet", "goodput-b_init=64-max_batch=1024",
                              "seed0")
    read, write = os.pipe()
    os.close(read)                                       # the reader is gone before the first line
    try:
        done = subprocess.run([sys.executable, "-m", "labkit", "replay", run_folder], stdout=write,
                              stderr=subprocess.PIPE, text=True, cwd=repo, timeout=120)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (1, "")
