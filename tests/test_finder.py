"""labkit.finder and ``labkit find-batch`` on CPU: scikit-learn digits (1437 training images of 8×8), an MLP,
quick budgets. The memory cap is set from ``StepMemory`` so that it binds exactly where the test says."""
import json
import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from labkit.cli import main
from labkit.data import load
from labkit.finder import _decide, find_batch_size
from labkit.memory import MemoryProbe, StepMemory
from labkit.models import build_model
from labkit.strategies import scaled_lr

FAST = dict(device="cpu", quick=True, base_batch=32, gns_steps=16, gns_every=2, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def mlp_memory(digits) -> StepMemory:
    return StepMemory.of(build_model("mlp", digits.input_shape, digits.num_classes), digits.x_train[:1])


def test_b_simple_binds_when_memory_is_plentiful(digits):
    rec = find_batch_size("mlp", digits, **FAST)
    assert rec.memory_max == 1432 and rec.binding == "gns"                # 1437 rounded down to a multiple of 8
    assert rec.reason.endswith("the training set (1432) fits in one batch")
    assert rec.b_simple > 0
    assert rec.batch_size == max(16, round(rec.b_simple / 8) * 8) <= rec.memory_max
    assert rec.lr == pytest.approx(scaled_lr(0.05, 32, rec.batch_size, "sqrt"))
    evidence = rec.evidence.set_index("batch")
    assert evidence.fits.all() and evidence.loc[rec.batch_size, "recommended"]
    assert evidence.samples_per_s.notna().sum() >= 3 and evidence.samples_per_s.dropna().gt(0).all()
    assert evidence.relative_time.min() == pytest.approx(1.0)


def test_memory_binds_under_a_tight_cap(digits):
    cap = mlp_memory(digits)(40) + 1                  # batch 40 fits, 48 does not
    rec = find_batch_size("mlp", digits, memory_cap_bytes=cap, min_batch=64, **FAST)
    assert rec.memory_max == 40 and rec.binding == "memory" and rec.batch_size == 40
    assert rec.settings["gns_batch"] == 32 and rec.lr == pytest.approx(scaled_lr(0.05, 32, 40, "sqrt"))
    evidence = rec.evidence.set_index("batch")
    assert not evidence.loc[48, "fits"] and evidence.loc[40, "fits"]
    assert evidence.loc[evidence.index > 40, "samples_per_s"].isna().all()


@pytest.mark.parametrize("b_simple, band, max_batch, limited, expected", [
    (101.0, (60.0, 200.0), 4096, False, (104, "gns")),          # rounded to the nearest multiple of 8
    (3.0, (2.0, 5.0), 4096, False, (16, "gns")),                # at least min_batch
    (900.0, (500.0, math.inf), 512, False, (512, "memory")),
    (900.0, (500.0, math.inf), 512, True, (512, "limit")),
    (-50.0, (math.inf, math.inf), 512, False, (512, "memory")),  # ‖G‖² averaged below 0: B_simple is large
    (None, None, 256, True, (256, "limit")),
])
def test_decision_is_the_smaller_of_b_simple_and_memory(b_simple, band, max_batch, limited, expected):
    tracker = SimpleNamespace(b_simple=b_simple, band=band)
    probe = MemoryProbe(max_batch, max_batch if limited else 2 * max_batch, trials=())
    batch, binding, reason = _decide(tracker, probe, min_batch=16, gns_batch=128, limit_name="max_batch")
    assert (batch, binding) == expected
    assert ("not resolved" in reason) == (b_simple is None or b_simple <= 0)
    assert ("max_batch (" in reason) == limited


def test_a_given_model_comes_back_untouched_and_the_files_are_written(digits, tmp_path):
    torch.manual_seed(1)
    model = build_model("mlp", digits.input_shape, digits.num_classes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = find_batch_size(model, digits, **FAST, max_batch=256, sizes=[16, 64, 512])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rec.settings["model"] == "Sequential"
    assert not rec.evidence.set_index("batch").loc[512, "fits"]       # asked for, above max_batch
    paths = rec.save(tmp_path)
    record = json.loads((tmp_path / "recommendation.json").read_text())
    assert record["batch_size"] == rec.batch_size and record["binding"] == rec.binding
    assert {"torch", "commit", "device_name", "date"} <= set(record["provenance"])
    assert len(record["evidence"]) == len(rec.evidence) and record["settings"]["gns_steps"] == 16
    assert [p.name for p in paths] == ["recommendation.json", "evidence.csv", "finder.png"]
    assert (tmp_path / "finder.png").stat().st_size > 10_000


@pytest.mark.parametrize("kwargs, error, words", [
    ({"model": "warp"}, ValueError, "model='warp' is not allowed: expected one of 'mlp'"),
    ({"dataset": "imagenet"}, ValueError, "dataset='imagenet' is not allowed"),
    ({"lr": 0}, ValueError, "lr=0 is out of range"),
    ({"lr_rule": "cube"}, ValueError, "lr_rule='cube' is not allowed"),
    ({"max_batch": 5000}, ValueError, "max_batch=5000, base_batch=32: expected both at most the 1437"),
    ({"sizes": [64, 0]}, ValueError, "sizes entry=0 is out of range"),
    ({"memory_cap_bytes": -1}, ValueError, "memory_cap_bytes=-1 is out of range"),
    ({"model": 3}, TypeError, "model=3 must be a model name"),
])
def test_bad_arguments_are_refused(kwargs, error, words):
    args = {"model": "mlp", "dataset": "digits", **FAST, **kwargs}
    with pytest.raises(error, match=words):
        find_batch_size(args.pop("model"), args.pop("dataset"), **args)


# -- your own model, data, loss and optimizer -------------------------------------------------------------------
def regression():
    """y = x·w + noise over 8 features: 512 examples, a two-layer regression net."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=generator)
    y = x @ torch.randn(8, 1, generator=generator) + 0.1 * torch.randn(512, 1, generator=generator)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 1)), TensorDataset(x, y)


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


@pytest.mark.parametrize("as_loader", [False, True])
def test_own_model_dataset_loss_and_optimizer(as_loader):
    model, data = regression()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    given = DataLoader(data, batch_size=100, shuffle=True) if as_loader else data
    rec = find_batch_size(model, given, loss_fn=nn.MSELoss(), optimizer=adamw, **FAST)
    assert rec.settings["dataset"] == "TensorDataset" and rec.settings["train_examples"] == 512
    assert rec.memory_max == 512 and rec.binding in ("gns", "limit") and 16 <= rec.batch_size <= 512
    assert rec.lr == pytest.approx(scaled_lr(1e-3, 32, rec.batch_size, "sqrt"))     # the optimizer's lr at 32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert rec.evidence.fits.all() and len(rec.evidence) >= 3


def test_own_data_under_a_tight_cap_takes_few_tries(caplog):
    model, data = regression()
    cap = StepMemory.of(model, data.tensors[0][:1])(200) + 1              # 200 fits, 208 does not
    with caplog.at_level(logging.INFO, logger="labkit.memory"):
        rec = find_batch_size(model, data, loss_fn=nn.MSELoss(), optimizer=adamw, memory_cap_bytes=cap, **FAST)
    assert rec.memory_max == 200 and rec.binding in ("memory", "gns") and rec.batch_size <= 200
    assert caplog.messages[-1] == "largest batch that fits: 200, after 5 tries"    # 16, 32, jump, 2 refinements


@pytest.mark.parametrize("kwargs, error, words", [
    ({"dataset": [1, 2, 3]}, TypeError, r"dataset=\[1, 2, 3\] must be a dataset name .* or a torch Dataset or "
                                        r"DataLoader of \(x, y\) pairs"),
    ({"loss_fn": "mse"}, TypeError, "loss_fn='mse' must be callable"),
    ({"optimizer": "adamw"}, TypeError, "optimizer='adamw' must be a factory of the parameters: use optimizer=lambda"),
    ({"optimizer": lambda params: "sgd"}, TypeError, r"optimizer\(model.parameters\(\)\) returned 'sgd': expected"),
    ({"dataset": TensorDataset(torch.randn(64, 8))}, TypeError, "gave a batch of type list: expected .x, y. pairs"),
    ({"dataset": TensorDataset(torch.randn(0, 8), torch.randn(0, 1))}, ValueError, "is empty"),
    ({"model": "mlp"}, ValueError, "model='mlp' is a classifier, but TensorDataset's targets are not class labels"),
])
def test_bad_own_inputs_name_the_value(kwargs, error, words):
    model, data = regression()
    args = {"model": model, "dataset": data, "loss_fn": nn.MSELoss(), **FAST, **kwargs}
    with pytest.raises(error, match=words):
        find_batch_size(args.pop("model"), args.pop("dataset"), **args)


# -- CLI ------------------------------------------------------------------------------------------------------
def test_cli_find_batch_prints_and_writes(tmp_path, capsys):
    code = main(["find-batch", "--dataset", "digits", "--model", "mlp", "--device", "cpu", "--quick",
                 "--base-batch", "32", "--gns-steps", "16", "--max-batch", "512", "--out", str(tmp_path)])
    assert code == 0
    out, err = capsys.readouterr()
    assert "recommended: batch " in out and "samples_per_s" in out
    assert "batch 16 fits" in err and "largest batch that fits: 512 (the limit)" in err
    assert json.loads((tmp_path / "recommendation.json").read_text())["settings"]["quick"] is True


@pytest.mark.parametrize("args, words", [
    (["--model", "warp"], "model='warp' is not allowed"),
    (["--lr", "-1"], "lr=-1 is out of range"),
    (["--lr-rule", "cube"], "argument --lr-rule: invalid choice: 'cube'"),
    (["--max-batch", "5000"], "max_batch=5000"),
    (["--base-batch", "x"], "argument --base-batch: invalid int value: 'x'"),
])
def test_cli_bad_arguments_give_one_line_and_exit_2(capsys, args, words):
    with pytest.raises(SystemExit) as caught:
        main(["find-batch", "--dataset", "digits", "--device", "cpu", "--quick", *args])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_cli_nothing_fits_gives_one_line_and_exit_1(capsys):
    code = main(["find-batch", "--dataset", "digits", "--device", "cpu", "--quick", "--memory-cap", "1e-6"])
    assert code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("labkit find-batch: no batch fits: even 8 examples ran out of memory")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_peaks_are_measured_and_a_cap_binds(digits):
    rec = find_batch_size("cnn", digits, **{**FAST, "device": "cuda"})
    fitted = rec.evidence[rec.evidence.fits].set_index("batch")
    assert fitted.peak_mb.gt(0).all() and fitted.peak_mb.loc[1024] > fitted.peak_mb.loc[16]
    cap = 1.02 * fitted.peak_mb.loc[256] * 2**20                          # about what batch 256 needed
    capped = find_batch_size("cnn", digits, **{**FAST, "device": "cuda"}, memory_cap_bytes=cap)
    assert 128 <= capped.memory_max < 512 and capped.batch_size <= capped.memory_max
    refused = capped.evidence[~capped.evidence.fits]
    assert len(refused) and capped.settings["memory_cap_bytes"] == cap


def test_read_recommendation_by_hand(tmp_path):
    from labkit.finder import read_recommendation

    rec = {"provenance": {"device_name": "GPU X", "torch": "2.5", "commit": "abc123", "date": "2026-01-01"},
           "settings": {"dataset": "mnist", "model": "mlp"}, "batch_size": 256, "lr": 0.01,
           "binding": "noise", "b_simple": 300.4, "b_simple_band": [200.0, 450.0],
           "evidence": [{"batch": 64, "samples_per_s": None, "relative_time": None},
                        {"batch": 256, "samples_per_s": 5000.0, "relative_time": 1.25},
                        {"batch": 512, "samples_per_s": 8000.0, "relative_time": 1.0},
                        {"batch": 1024, "samples_per_s": 9000.0, "relative_time": 1.1}]}
    path = tmp_path / "recommendation.json"
    path.write_text(json.dumps(rec))
    row = read_recommendation(path)
    # the untimed 64 drops out; 512 has the smallest relative time; the chosen 256 is read from its own row
    assert row == {"name": "mnist mlp", "ran": "GPU X, torch 2.5,\n  labkit commit abc123, 2026-01-01",
                   "batch": 256, "lr": 0.01, "binding": "noise", "B_simple": 300.4, "band low": 200.0,
                   "samples/s": 5000.0, "rel. time": 1.25, "fastest B": 512}
