"""fit under DDP: two gloo ranks on the CPU train digits/mlp with an adaptive strategy as one model.

One spawned run of 2 processes (each start imports torch, ~3 s) does everything on both ranks: an
uninterrupted 3-epoch run, a run stopped after epoch 1 and resumed, a run of the gns strategy (its noise
scale read from the replicas), one deciding at every step, and a strategy whose sizes do not split over 2
ranks. Each rank writes what it saw to a JSON file; the parent compares them, and with one process
training on the same global batches.
"""
import datetime
import json
import math
import os
import subprocess
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from labkit.cli import main
from labkit.train import TrainConfig, fit
from ranks import spawn

WORLD = 2
CONFIG = TrainConfig(dataset="digits", model="mlp", strategy="loss", epochs=3, lr=0.05, quick=False, device="cpu",
                     strategy_params={"b_init": 32, "min_batch": 16, "max_batch": 256, "multiple_of": 2,
                                      "delta": "ema", "alpha": 0.5})
GNS = TrainConfig(**{**CONFIG.__dict__, "strategy": "gns", "epochs": 2, "gns_every": 5,
                     "strategy_params": {"b_init": 32, "min_batch": 16, "max_batch": 256, "multiple_of": 2,
                                         "alpha": 0.5}})
PER_STEP = TrainConfig(**{**CONFIG.__dict__, "epochs": 1, "decide_every": "step"})
TIMING = ["epoch_time_s", "wall_time_s", "samples_per_s", "energy_j", "peak_mem_mb"]


class Stop(Exception):
    """Raised on every rank at the start of epoch 2: the run stops as if killed after epoch 1."""


def _watched(rank, out):
    """Patch labkit so this rank records the files it writes, its model and its strategy's last state."""
    import labkit.checkpoint
    import labkit.train

    seen = {"written": [], "model": None, "strategy": None}
    atomic_path, make_optimizer, save_history = (labkit.checkpoint.atomic_path, labkit.train.make_optimizer,
                                                 labkit.train.save_history)

    @contextmanager
    def recorded_path(path):
        seen["written"].append(str(path))
        with atomic_path(path) as partial:
            yield partial

    def kept_model(config, model):
        seen["model"] = model
        return make_optimizer(config, model)

    def kept_strategy(out, rows, strategy=None):
        seen["strategy"] = strategy.state_dict()
        return save_history(out, rows, strategy)

    labkit.checkpoint.atomic_path = recorded_path
    labkit.train.make_optimizer = kept_model
    labkit.train.save_history = kept_strategy
    return seen


def _outcome(history, seen):
    return {"history": history.drop(columns=TIMING).to_dict("list"), "written": seen["written"],
            "strategy": seen["strategy"],
            "params": [p.detach().flatten().tolist() for p in seen["model"].parameters()]}


def _worker(rank, tmp):
    import labkit.train

    out = {}
    try:
        torch.set_num_threads(1)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                                             world_size=WORLD, timeout=datetime.timedelta(seconds=30))
        seen = _watched(rank, tmp)
        out["full"] = _outcome(fit(CONFIG, f"{tmp}/full", progress=False), seen)

        seen["written"].clear()
        train_epoch, calls = labkit.train._train_epoch, []

        def stopping(*args):
            calls.append(1)
            if len(calls) == 2:
                raise Stop
            return train_epoch(*args)

        labkit.train._train_epoch = stopping
        try:
            fit(CONFIG, f"{tmp}/resumed", progress=False)
        except Stop:
            out["stopped_after"] = len(calls) - 1
        labkit.train._train_epoch = train_epoch
        out["resumed"] = _outcome(fit(CONFIG, f"{tmp}/resumed", resume=True, progress=False), seen)

        out["gns"] = _outcome(fit(GNS, progress=False), seen)
        out["per_step"] = _outcome(fit(PER_STEP, progress=False), seen)
        odd = TrainConfig(**{**CONFIG.__dict__, "strategy_params": {**CONFIG.strategy_params, "multiple_of": 1}})
        try:
            fit(odd, progress=False)
        except ValueError as error:
            out["odd"] = str(error)
        torch.distributed.destroy_process_group()
    except Exception:                                 # noqa: BLE001 - reported by the parent
        out["traceback"] = traceback.format_exc()
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump(out, f)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks recorded, from one spawned run."""
    tmp = tmp_path_factory.mktemp("ddp_fit")
    return tmp, spawn(_worker, (str(tmp),), WORLD, tmp)


def test_ranks_end_with_one_strategy_and_one_model(ranks):
    _, (zero, one) = ranks
    for run in ("full", "resumed"):
        assert zero[run]["strategy"] == one[run]["strategy"]
        assert zero[run]["params"] == one[run]["params"]          # DDP keeps the replicas equal
        assert zero[run]["history"] == one[run]["history"]


def test_only_rank_0_writes(ranks):
    tmp, (zero, one) = ranks
    assert one["full"]["written"] == one["resumed"]["written"] == []
    assert {Path(path).name for path in zero["full"]["written"]} == {"config.json", "history.csv", "decisions.csv",
                                                                      "checkpoint.pt"}
    assert sorted(path.name for path in (tmp / "full").iterdir()) == ["checkpoint.pt", "config.json",
                                                                      "decisions.csv", "history.csv"]


def test_global_batches_are_the_strategys_decisions(ranks):
    tmp, (zero, _) = ranks
    history = pd.read_csv(tmp / "full" / "history.csv")
    decisions = pd.read_csv(tmp / "full" / "decisions.csv")
    assert list(history.batch_size) == [CONFIG.strategy_params["b_init"], *decisions.new[:-1]]
    assert list(history.next_batch) == list(decisions.new)
    assert history.next_batch.nunique() > 1                         # the strategy did adapt
    assert (history.batch_size % WORLD == 0).all()
    assert list(history.samples) == list((history.batch_size * history.steps.diff().fillna(history.steps)).cumsum())
    assert zero["full"]["strategy"]["batch_size"] == history.next_batch.iloc[-1]


def test_a_stopped_and_resumed_run_is_the_uninterrupted_one(ranks):
    tmp, (zero, one) = ranks
    assert zero["stopped_after"] == one["stopped_after"] == 1
    assert zero["resumed"]["history"] == zero["full"]["history"]
    assert zero["resumed"]["params"] == zero["full"]["params"]
    full, resumed = (pd.read_csv(tmp / run / "history.csv").drop(columns=TIMING) for run in ("full", "resumed"))
    pd.testing.assert_frame_equal(full, resumed)


def test_two_ranks_train_like_one_process_on_the_global_batches(ranks):
    _, (zero, _) = ranks
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # as each rank: an MLP this small runs slower on two contended cores
    try:
        alone = fit(CONFIG, progress=False).drop(columns=TIMING)
    finally:
        torch.set_num_threads(threads)
    ddp = pd.DataFrame(zero["full"]["history"])
    pd.testing.assert_frame_equal(ddp[["epoch", "batch_size", "steps", "samples", "next_batch", "reason"]],
                                  alone[["epoch", "batch_size", "steps", "samples", "next_batch", "reason"]],
                                  check_dtype=False)
    for column in ("train_loss", "train_entropy", "test_loss", "test_acc", "lr"):
        assert list(ddp[column]) == pytest.approx(list(alone[column]), rel=1e-4), column


def test_sizes_that_do_not_split_over_the_ranks_are_refused(ranks):
    _, results = ranks
    for result in results:
        assert "multiple_of=1 under 2 DDP ranks" in result["odd"] and "--multiple-of 2" in result["odd"]


def test_the_noise_scale_comes_from_the_replicas_on_every_rank(ranks):
    _, (zero, one) = ranks
    assert zero["gns"]["history"] == one["gns"]["history"]
    assert zero["gns"]["strategy"] == one["gns"]["strategy"]
    gns = zero["gns"]["history"]["gns"]
    assert all(math.isfinite(value) and value > 0 for value in gns)
    assert zero["gns"]["history"]["next_batch"] != zero["gns"]["history"]["batch_size"]   # it decided from it


def test_per_step_decisions_are_agreed_at_every_step(ranks):
    _, (zero, one) = ranks
    assert zero["per_step"]["strategy"] == one["per_step"]["strategy"]
    assert zero["per_step"]["params"] == one["per_step"]["params"]
    decisions = zero["per_step"]["strategy"]["history"]
    assert len(decisions) == zero["per_step"]["history"]["steps"][-1]                 # one per step
    assert len({d["new"] for d in decisions}) > 1


@pytest.mark.parametrize("nproc, message", [("0", "--nproc 0: give 1 or more processes"),
                                            ("999", "--nproc 999 is more than")])
def test_nproc_out_of_range_is_one_line(tmp_path, capsys, nproc, message):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--dataset", "digits", "--nproc", nproc, "--device", "cpu", "--out", str(tmp_path / "r")])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_nproc_relaunches_the_same_command_under_torchrun(tmp_path, monkeypatch):
    import labkit.cli

    launched = []
    monkeypatch.setattr(labkit.cli.subprocess, "run",
                        lambda command: launched.append(command) or subprocess.CompletedProcess(command, 0))
    args = ["train", "--dataset", "digits", "--strategy", "loss", "--multiple-of", "2", "--device", "cpu",
            "--out", str(tmp_path / "r")]
    assert main([*args[:3], "--nproc", "2", *args[3:]]) == 0
    assert main([*args, "--nproc=2"]) == 0
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "labkit"]
    assert launched == [prefix + args, prefix + args]


def test_nproc_with_sizes_that_do_not_split_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--dataset", "digits", "--nproc", "2", "--device", "cpu", "--out", str(tmp_path / "r")])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "multiple_of=1 under 2 DDP ranks" in lines[0]
