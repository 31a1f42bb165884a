"""The honest-baseline protocol on CPU (digits): LR schedule inside fit, dead runs, the validation split,
the tuner and the sweep that uses its choices."""
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from labkit import train as train_module
from labkit.cli import main
from labkit.data import load
from labkit.comparison import reach_ratios
from labkit.experiments import chosen_lrs, log_grid, open_edges, summary, sweep, tune
from labkit.lr_schedules import LRSchedule, lr_factor
from labkit.train import DeadRun, TrainConfig, fit

BASE = TrainConfig(dataset="digits", model="mlp", epochs=3, lr=0.05, quick=False, device="cpu",
                   strategy_params={"b_init": 32, "min_batch": 16, "max_batch": 256})
N_TRAIN = 1437                      # digits: the stratified training split


def last_batch_progress(epoch: int, batch: int, epochs: int, n: int = N_TRAIN) -> float:
    """Share of training done at the middle of an epoch's last full batch (fit drops the partial one)."""
    steps = n // batch
    return (epoch + ((steps - 1) * batch + batch / 2) / n) / epochs


@pytest.mark.parametrize("schedule", ["linear", "cosine", "step", "onecycle", "constant"])
def test_fit_follows_the_schedule_at_a_fixed_batch(schedule):
    config = TrainConfig(**{**BASE.__dict__, "lr_schedule": schedule, "lr_warmup": 1.0, "lr_rule": "none"})
    history = fit(config, progress=False)
    for epoch, lr in enumerate(history.lr):
        p = last_batch_progress(epoch, 32, 3)
        assert lr == pytest.approx(0.05 * lr_factor(schedule, p, warmup=1 / 3), rel=1e-9)


def test_schedule_is_in_samples_and_coupling_multiplies_on_top():
    config = TrainConfig(**{**BASE.__dict__, "strategy": "linear", "lr_rule": "sqrt", "lr_warmup": 0.0,
                            "strategy_params": {"b_init": 32, "a": 96, "max_batch": 512}})
    history = fit(config, progress=False)
    assert list(history.batch_size) == [32, 128, 224]
    for epoch, (batch, lr) in enumerate(zip(history.batch_size.astype(int), history.lr)):
        p = last_batch_progress(epoch, batch, 3)
        assert lr == pytest.approx(0.05 * (1 - p) * math.sqrt(batch / 32), rel=1e-9)


def adascale_by_hand(b_noise: float, base: int, batch: int) -> float:
    """AdaScale's gain (B_noise + B₀)·B / ((B_noise + B)·B₀), written out here (not labkit's adascale_gain)."""
    return (b_noise + base) * batch / ((b_noise + batch) * base)


@pytest.mark.parametrize("b_noise, gain", [(96.0, 128 * 128 / (224 * 32)), (0.0, 1.0), (None, 1.0), (-50.0, 1.0)])
def test_adascale_step_lr_is_the_schedule_times_the_gain(b_noise, gain):
    config = TrainConfig(epochs=2, lr=0.1, lr_rule="adascale", lr_schedule="linear", lr_warmup=0.0)
    schedule = LRSchedule("linear", warmup=0.0)
    tracker = SimpleNamespace(b_simple=b_noise)       # the smoothed B_simple; None before the first reading
    # epoch 1, 2 DDP ranks: 100 samples done per rank, a batch of 64 per rank is the global batch B = 128
    lr = train_module._lr(config, schedule, 32, 1, 1000, 2, tracker, 100, 64)
    p = (1 + (200 + 64) / 1000) / 2
    assert lr == pytest.approx(0.1 * (1 - p) * gain, rel=1e-12)
    # the other rules ignore the tracker, and there may be none
    assert train_module._lr(replace(config, lr_rule="linear"), schedule, 32, 1, 1000, 2, None, 100, 64) == \
        pytest.approx(0.1 * (1 - p) * 4.0, rel=1e-12)


def test_adascale_in_fit_tracks_the_noise_scale_and_lies_between_none_and_linear():
    config = TrainConfig(**{**BASE.__dict__, "strategy": "linear", "lr_rule": "adascale", "lr_warmup": 0.0,
                            "strategy_params": {"b_init": 32, "a": 96, "max_batch": 512}})
    history = fit(config, progress=False)
    assert list(history.batch_size) == [32, 128, 224]
    assert history.gns.notna().all() and (history.gns > 0).all()    # "linear" needs no tracker; adascale made one
    for epoch, (batch, lr, b_noise) in enumerate(zip(history.batch_size.astype(int), history.lr, history.gns)):
        none = 0.05 * (1 - last_batch_progress(epoch, batch, 3))      # lr_rule="none"; "linear" is none · B/32
        assert none <= lr <= none * batch / 32 * (1 + 1e-12)
        if batch > 32:
            assert none * 1.01 < lr < none * batch / 32 * 0.99        # strictly inside: neither none nor linear
        # 61 steps, so one reading (step 0, GNSTracker's every=100): the epoch's last step saw the row's B_simple
        assert lr == pytest.approx(none * adascale_by_hand(b_noise, 32, batch), rel=1e-9)


def test_default_warmup_is_one_epoch_capped_at_a_fifth():
    assert train_module._warmup_share(TrainConfig(epochs=20)) == pytest.approx(1 / 20)
    assert train_module._warmup_share(TrainConfig(epochs=3)) == pytest.approx(0.2)
    assert train_module._warmup_share(TrainConfig(epochs=3, lr_schedule="constant")) == 0.0


def test_a_dead_run_stops_with_a_message_and_keeps_its_history(tmp_path):
    config = TrainConfig(**{**BASE.__dict__, "epochs": 5, "lr": 1e-9})      # learns nothing: loss stays ln 10
    with pytest.raises(DeadRun, match=r"dead at epoch 2: train loss .* within 2% of ln C") as caught:
        fit(config, tmp_path, progress=False)
    saved = pd.read_csv(tmp_path / "history.csv")
    assert len(saved) == 2 and len(caught.value.history) == 2
    assert saved.reason.iloc[-1].startswith("stopped: dead")
    assert abs(saved.train_loss.iloc[-1] - math.log(10)) < 0.02 * math.log(10)


def test_a_live_run_is_not_called_dead():
    assert fit(BASE, progress=False).test_acc.iloc[-1] > 0.5       # 3 epochs, never stopped


def test_dead_rule_on_accuracy_at_chance():
    rows = [dict(train_loss=1.5, test_acc=0.105), dict(train_loss=1.4, test_acc=0.105)]
    assert "at chance" in train_module._dead(rows, math.log(10), 0.1)
    assert train_module._dead(rows[:1], math.log(10), 0.1) is None                  # needs two epochs
    assert train_module._dead([*rows[:1], dict(train_loss=1.4, test_acc=0.3)], math.log(10), 0.1) is None


def test_sweep_marks_dead_seeds_and_leaves_them_out_of_the_means(tmp_path):
    runs = ["ok=fixed:b_init=32", "dead=fixed:b_init=32"]
    sweep(BASE, runs, [0, 1], tmp_path, progress=False, lrs={"ok": 0.05, "dead": 1e-9})
    table = summary(tmp_path)
    assert table.loc["ok", "seeds"] == 2 and table.loc["ok", "failed"] == 0
    assert table.loc["dead", "seeds"] == 0 and table.loc["dead", "failed"] == 2
    assert math.isnan(table.loc["dead", "final_acc_mean"])
    finals = [pd.read_csv(tmp_path / "ok" / f"seed{s}" / "history.csv").test_acc.iloc[-1] for s in (0, 1)]
    assert table.loc["ok", "final_acc_mean"] == pytest.approx(sum(finals) / 2)
    # a stopped run counts as finished: a second sweep does not train it again
    before = (tmp_path / "dead" / "seed0" / "history.csv").stat().st_mtime_ns
    sweep(BASE, runs, [0, 1], tmp_path, progress=False, lrs={"ok": 0.05, "dead": 1e-9})
    assert (tmp_path / "dead" / "seed0" / "history.csv").stat().st_mtime_ns == before


def test_validation_split_is_held_out_of_train_and_replaces_test():
    data = load("digits")
    split = data.validation_split(0.2)
    assert len(split.y_test) == round(0.2 * N_TRAIN) and len(split.y_train) + len(split.y_test) == N_TRAIN
    rows = {tuple(x.flatten().tolist()) for x in data.x_train}
    assert all(tuple(x.flatten().tolist()) in rows for x in split.x_test)       # validation comes from train
    assert torch.equal(data.validation_split(0.2).y_test, split.y_test)         # the same split every time
    with pytest.raises(ValueError, match="validation=1"):
        data.validation_split(1.0)


def test_the_tuner_never_reads_the_test_split(tmp_path, monkeypatch):
    runs = ["fixed:b_init=32"]
    real = tune(BASE, runs, [0.02, 0.1], tmp_path / "real", validation=0.2, progress=False)
    original = train_module.load

    def scrambled(*args, **kwargs):        # the same data with a test split of noise and wrong labels
        data = original(*args, **kwargs)
        noise = torch.randn(data.x_test.shape, generator=torch.Generator().manual_seed(1))  # not the global RNG
        return type(data)(**{**data.__dict__, "x_test": noise,
                             "y_test": (data.y_test + 1) % data.num_classes})

    monkeypatch.setattr(train_module, "load", scrambled)
    other = tune(BASE, runs, [0.02, 0.1], tmp_path / "other", validation=0.2, progress=False)
    pd.testing.assert_frame_equal(real, other)
    without = fit(TrainConfig(**{**BASE.__dict__, "epochs": 1}), progress=False)  # the check can fail:
    assert without.test_acc.iloc[-1] < 0.5                                     # test scores do change


def test_tune_picks_the_best_validation_lr_and_sweep_uses_it(tmp_path, capsys):
    tune_dir, sweep_dir = tmp_path / "tune", tmp_path / "sweep"
    assert main(["tune", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--device", "cpu",
                 "--lrs", "1e-9", "0.01", "0.1", "--runs", "fixed:b_init=32", "--out", str(tune_dir),
                 "--no-progress"]) == 0
    table = pd.read_csv(tune_dir / "tune.csv")
    assert list(table.lr) == [1e-9, 0.01, 0.1]
    assert table.failed.tolist() == [True, False, False]          # lr 1e-9 learns nothing: flagged dead
    chosen = json.loads((tune_dir / "chosen.json").read_text())
    live = table[~table.failed]
    assert chosen == {"fixed-b_init=32": live.lr[live.val_acc.idxmax()]}
    config = json.loads((tune_dir / "fixed-b_init=32" / "lr=0.1" / "config.json").read_text())["config"]
    assert config["validation"] == 0.1                           # tune's default held-out share
    assert main(["sweep", "--dataset", "digits", "--model", "mlp", "--epochs", "2", "--device", "cpu",
                 "--tuned", str(tune_dir), "--runs", "fixed:b_init=32", "--seeds", "0", "--out", str(sweep_dir),
                 "--no-progress"]) == 0
    used = json.loads((sweep_dir / "fixed-b_init=32" / "seed0" / "config.json").read_text())["config"]
    assert used["lr"] == chosen["fixed-b_init=32"] and used["validation"] == 0.0


def test_chosen_lrs_skip_failed_trials_and_log_grid_is_log_spaced():
    table = pd.DataFrame(dict(label=["a", "a", "a", "b"], lr=[0.1, 0.2, 0.4, 0.1], val_acc=[0.5, 0.7, 0.9, 0.1],
                              failed=[False, False, True, True]))
    assert chosen_lrs(table) == {"a": 0.2}
    grid = log_grid(0.1)
    assert grid == pytest.approx([0.025, 0.05, 0.1, 0.2, 0.4])


def test_open_edges_step_past_a_best_lr_at_either_end_of_its_own_grid():
    table = pd.DataFrame(dict(label=["hi"] * 3 + ["lo"] * 3 + ["mid"] * 3 + ["hi3"] * 2,
                              lr=[0.1, 0.2, 0.4, 0.1, 0.2, 0.4, 0.1, 0.2, 0.4, 0.1, 0.3],
                              val_acc=[0.5, 0.6, 0.7, 0.9, 0.6, 0.5, 0.5, 0.9, 0.5, 0.5, 0.6],
                              failed=[False] * 11))
    assert open_edges(table) == {"hi": 0.8, "lo": 0.05, "hi3": pytest.approx(0.9)}
    table.loc[(table.label == "mid") & (table.lr == 0.4), "failed"] = True
    assert "mid" not in open_edges(table)                            # a failed top end is a closed end


def test_tune_widen_adds_lrs_until_the_best_is_inside_the_grid(tmp_path, capsys):
    table = tune(BASE, ["fixed:b_init=32"], [0.016, 0.032], tmp_path, validation=0.2, progress=False, widen=5)
    lrs = sorted(table.lr)
    assert 2 < len(lrs) < 7                              # 0.032 is too small: it grew, and stopped early
    assert lrs == pytest.approx([0.016 * 2 ** k for k in range(len(lrs))])   # upward, ×2 at a time
    assert chosen_lrs(table)["fixed-b_init=32"] < lrs[-1]          # the best LR is now inside the grid
    assert "widening the grid" in capsys.readouterr().out


def test_cli_sweep_tuned_without_chosen_json_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        main(["sweep", "--dataset", "digits", "--tuned", str(tmp_path), "--runs", "fixed", "--out",
              str(tmp_path / "s")])
    assert code.value.code == 2
    assert "no chosen.json" in capsys.readouterr().err


def test_reach_ratios_by_hand():
    def run(name, seed, accs, times, reason=""):
        return pd.DataFrame(dict(run=name, seed=seed, epoch=range(1, len(accs) + 1), test_acc=accs,
                                 wall_time_s=times, steps=0, samples=0, reason=reason))
    histories = pd.concat([
        run("ref", 0, [0.5, 0.75, 0.875], [10, 20, 30]), run("ref", 1, [0.5, 0.5, 0.625], [10, 20, 40]),
        run("fast", 0, [0.75, 0.875], [5, 9]), run("fast", 1, [0.5, 0.75], [4, 8]),
        run("slow", 0, [0.875, 0.875], [50, 60]), run("slow", 1, [0.125], [1], reason="stopped: dead, at chance"),
        run("never", 0, [0.5, 0.625], [1, 2]),
    ], ignore_index=True)
    table = reach_ratios(histories, "ref").set_index("run")
    # target: the reference's mean final accuracy (0.875 + 0.625) / 2 = 0.75; its mean time (30 + 40) / 2 = 35
    assert table.target.iloc[0] == 0.75
    assert table.loc["fast", "ratio"] == pytest.approx((5 + 8) / 2 / 35)
    assert table.loc["slow", "seeds"] == 1 and math.isnan(table.loc["slow", "ratio"])  # 1 live seed of 2: no ratio
    lenient = reach_ratios(histories, "ref", min_seeds=1).set_index("run")
    assert lenient.loc["slow", "ratio"] == pytest.approx(50 / 35)                 # its dead seed is left out
    assert table.loc["ref", "reached"] == 1 and math.isnan(table.loc["ref", "ratio"])
    assert table.loc["never", "reached"] == 0 and math.isnan(table.loc["never", "ratio"])
    assert list(table.index[:1]) == ["fast"] and list(lenient.index[:2]) == ["fast", "slow"]
    with pytest.raises(ValueError, match="reference='nope'"):
        reach_ratios(histories, "nope")
