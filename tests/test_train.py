"""The training loop and the CLI on CPU with tiny sizes (scikit-learn digits: 8×8 images, 10 classes)."""
import json
import math

import pandas as pd
import pytest

from labkit.arguments import build_parser, run_config
from labkit.cli import main
from labkit.data import load
from labkit import train as train_module
from labkit.train import Diverged, TrainConfig, fit

TIMING = ["epoch_time_s", "wall_time_s", "samples_per_s"]
BASE = TrainConfig(dataset="digits", model="mlp", epochs=3, lr=0.05, quick=False, device="cpu",
                   strategy_params={"b_init": 32, "min_batch": 16, "max_batch": 256})

PER_STRATEGY = {
    "fixed": {}, "linear": {"a": 32}, "exponential": {"a": 2}, "cyclical": {"period": 2},
    "loss": {"delta": "ema", "alpha": 0.5}, "confidence": {"num_classes": 10, "low": 0.3, "high": 0.9},
    "gns": {"alpha": 0.5}, "progressive": {"warmup": 2}, "epoch": {"milestones": {2: 128}},
}


@pytest.mark.parametrize("name", list(PER_STRATEGY))
def test_each_strategy_trains_and_logs(name):
    config = TrainConfig(**{**BASE.__dict__, "strategy": name,
                            "strategy_params": {**BASE.strategy_params, **PER_STRATEGY[name]}})
    history = fit(config, progress=False)
    assert list(history.epoch) == [1, 2, 3]
    assert history.test_acc.iloc[-1] > 0.5                     # 10 classes: chance is 0.1
    assert (history.samples.diff().dropna() > 0).all()
    assert history.reason.str.len().gt(0).all()
    # the batch used in an epoch is the one decided at the end of the previous epoch
    assert (history.batch_size.iloc[1:].to_numpy() == history.next_batch.iloc[:-1].to_numpy()).all()
    if name == "gns":
        assert history.gns.notna().all() and (history.gns > 0).all()


def test_linear_batch_sizes_follow_the_formula():
    config = TrainConfig(**{**BASE.__dict__, "strategy": "linear", "epochs": 4,
                            "strategy_params": {"b_init": 32, "a": 48, "max_batch": 512}})
    history = fit(config, progress=False)
    assert list(history.batch_size) == [32, 80, 128, 176]
    n = len(load("digits").y_train)
    assert list(history.steps.diff().fillna(history.steps.iloc[0])) == [n // b for b in (32, 80, 128, 176)]


def test_same_seed_same_run_on_cpu():
    a = fit(BASE, progress=False).drop(columns=TIMING)
    b = fit(BASE, progress=False).drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)


def test_resume_equals_uninterrupted(tmp_path, monkeypatch):
    config = TrainConfig(**{**BASE.__dict__, "strategy": "loss", "epochs": 4, "augment": True,
                            "strategy_params": {"b_init": 32, "delta": "diff", "max_batch": 256}})
    whole = fit(config, tmp_path / "whole", progress=False)
    evaluate = train_module.evaluate
    calls = []

    def interrupted(*args):               # the third evaluation: after epoch 2's checkpoint, before epoch 3's
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return evaluate(*args)

    monkeypatch.setattr(train_module, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "part", progress=False)
    monkeypatch.undo()
    assert len(pd.read_csv(tmp_path / "part" / "history.csv")) == 2
    resumed = fit(config, tmp_path / "part", resume=True, progress=False)
    assert len(resumed) == 4
    pd.testing.assert_frame_equal(whole.drop(columns=TIMING), resumed.drop(columns=TIMING))
    saved = pd.read_csv(tmp_path / "part" / "history.csv")
    assert list(saved.epoch) == [1, 2, 3, 4]


def test_divergence_stops_with_message_and_keeps_history(tmp_path):
    config = TrainConfig(**{**BASE.__dict__, "lr": 1e12, "epochs": 5})
    with pytest.raises(Diverged, match="training diverged at epoch 1: train loss is nan") as caught:
        fit(config, tmp_path, progress=False)
    assert caught.value.history.reason.iloc[-1] == "stopped: loss is not finite"
    assert pd.read_csv(tmp_path / "history.csv").epoch.tolist() == [1]


def test_decisions_every_step():
    config = TrainConfig(**{**BASE.__dict__, "strategy": "linear", "decide_every": "step", "epochs": 1,
                            "strategy_params": {"b_init": 16, "a": 16, "max_batch": 128}})
    history = fit(config, progress=False)
    # 16, 32, ..., 128 then 128 until the data runs out: the epoch mean lies strictly between
    assert 16 < history.batch_size.iloc[0] < 128 and history.next_batch.iloc[0] == 128


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="lr_rule='cube' is not allowed: expected one of 'linear', 'sqrt', "
                                         "'none', 'adascale'$"):
        fit(TrainConfig(**{**BASE.__dict__, "lr_rule": "cube"}), progress=False)
    with pytest.raises(ValueError, match="min_batch=4096 is larger than the training set of digits"):
        fit(TrainConfig(**{**BASE.__dict__, "strategy_params": {"b_init": 4096, "min_batch": 4096,
                                                                 "max_batch": 8192}}), progress=False)


# -- CLI -----------------------------------------------------------------------------------------------------

def test_cli_train_writes_history_config_and_plot(tmp_path, capsys):
    code = main(["train", "--dataset", "digits", "--model", "mlp", "--strategy", "exponential", "--b-init", "32",
                 "--a", "2", "--max-batch", "128", "--epochs", "2", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path)])
    assert code == 0
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.batch_size) == [32, 64]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["config"]["strategy_params"] == {"b_init": 32, "a": 2.0, "max_batch": 128}
    assert {"torch", "commit", "device_name", "date"} <= set(config["provenance"])
    assert (tmp_path / "history.png").stat().st_size > 10_000
    assert "done: 2 epochs" in capsys.readouterr().out


@pytest.mark.parametrize("args,words", [
    (["--strategy", "loss", "--alpha", "2"], "alpha=2 is out of range"),
    (["--strategy", "linear", "--alpha", "0.5"], "strategy 'linear' takes no parameter 'alpha'"),
    (["--strategy", "warp"], "argument --strategy: invalid choice: 'warp'"),
    (["--strategy", "epoch", "--milestones", "5-128"], "milestones='5-128' is not allowed"),
    (["--lr", "-1"], "lr=-1 is out of range"),
    (["--dataset", "imagenet"], "imagenet"),
])
def test_cli_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys, args, words):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--out", str(tmp_path), "--device", "cpu", "--no-progress", *args])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


@pytest.mark.parametrize("command", ["train", "sweep", "tune"])
def test_cli_takes_lr_rule_adascale_for_training_not_for_find_batch(tmp_path, command, capsys):
    args = build_parser().parse_args([command, "--out", str(tmp_path), "--device", "cpu", "--lr-rule", "adascale",
                                      *(["--runs", "fixed"] if command != "train" else [])])
    assert run_config(args).lr_rule == "adascale"
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["find-batch", "--lr-rule", "adascale"])
    assert caught.value.code == 2 and "invalid choice: 'adascale'" in capsys.readouterr().err


def test_cli_help_lists_strategy_flags(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["train", "--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--b-init", "--a ", "--alpha", "--window", "--delta", "--change", "--min-batch", "--max-batch",
                 "--lr-rule", "--seed", "--device", "--compile"):
        assert flag in text


def test_compiled_model_does_not_recompile_when_the_batch_size_changes():
    import torch

    from labkit.models import build_model
    from labkit.step import compiled

    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    model = build_model("cnn", (1, 8, 8), 10)
    forward = compiled(model, backend=counting_backend)
    for batch in (16, 24, 40, 64, 33, 512):
        assert forward(torch.randn(batch, 1, 8, 8)).shape == (batch, 10)
    assert len(graphs) == 1


def test_curriculum_serves_a_growing_share_of_the_data(tmp_path):
    from labkit.curriculum import competence

    fit(TrainConfig(**{**BASE.__dict__, "epochs": 1}), tmp_path / "reference", progress=False)
    n = len(load("digits").y_train)
    for source in ("self", str(tmp_path / "reference")):
        config = TrainConfig(**{**BASE.__dict__, "epochs": 4, "strategy": "progressive", "curriculum": source,
                                "curriculum_c0": 0.3, "curriculum_epochs": 3, "strategy_params": {
                                    **BASE.strategy_params, "target": 128, "warmup": 3}})
        history = fit(config, progress=False)
        shares = [competence(e, 3, c0=0.3) for e in range(4)]            # c(t) = √(c0² + (1 − c0²)·t/T)
        assert history.pool_fraction.tolist() == pytest.approx([math.ceil(c * n) / n for c in shares], abs=1e-9)
        assert history.pool_fraction.iloc[0] < 0.5 and history.pool_fraction.iloc[-1] == 1.0
        assert history.test_acc.iloc[-1] > 0.5


def test_curriculum_needs_a_run_folder_or_self(tmp_path):
    with pytest.raises(ValueError, match="neither 'self' nor a run folder"):
        fit(TrainConfig(**{**BASE.__dict__, "curriculum": str(tmp_path)}), progress=False)
