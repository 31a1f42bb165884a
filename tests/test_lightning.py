"""AdaptiveBatchSize in a Lightning Trainer: epoch and step modes, logs, a checkpoint round trip, DDP agreement.

A linear model on 96 random samples; each test is one or two ``fit`` calls of a few epochs on the CPU. The
DDP test runs Lightning's ``ddp`` strategy in two spawned gloo processes (one spawned run, ~10 s).
"""
from __future__ import annotations

import csv
import json
import os
import socket
import traceback

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning", reason="the Lightning callback needs lightning: pip install -e '.[dev]'")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, Logger  # noqa: E402

import labkit.strategies as s  # noqa: E402
from labkit.integrations.lightning import AdaptiveBatchSize  # noqa: E402
from ranks import spawn  # noqa: E402

N = 96


def samples(seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=g)
    return TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(N, generator=g))


class Regression(L.LightningModule):
    """A linear model trained on ``adaptive.loader(samples(seed))``; it records (epoch, batch size) per
    training batch and the epochs it validated in."""

    def __init__(self, adaptive: AdaptiveBatchSize, validate: bool = False, seed: int = 0):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(4, 1)
        self.adaptive, self.validate, self.seed = adaptive, validate, seed
        self.seen: list[tuple[int, int]] = []
        self.validations: list[int] = []

    def train_dataloader(self):
        return self.adaptive.loader(samples(self.seed), seed=0)

    def val_dataloader(self):
        return DataLoader(samples(1), batch_size=32)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, len(x)))
        return torch.nn.functional.mse_loss(self.net(x).squeeze(1), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.validations.append(self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(tmp_path, adaptive: AdaptiveBatchSize, epochs: int, *callbacks, ckpt_path=None, **kwargs) -> Regression:
    """Train a ``Regression`` on ``adaptive``'s loader in a quiet CPU Trainer that logs CSV to tmp_path/logs;
    ``kwargs`` go to the model (validate, seed) or override the Trainer's defaults."""
    model = Regression(adaptive, **{k: kwargs.pop(k) for k in ("validate", "seed") if k in kwargs})
    options = dict(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="logs"), log_every_n_steps=1,
                   enable_checkpointing=bool(callbacks), enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=1.0 if model.validate else 0)
    L.Trainer(max_epochs=epochs, callbacks=[adaptive, *callbacks], use_distributed_sampler=False,
              **{**options, **kwargs}).fit(model, ckpt_path=ckpt_path)
    return model


def sizes_per_epoch(seen) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for epoch, size in seen:
        out.setdefault(epoch, []).append(size)
    return out


def test_epoch_mode_serves_whole_epochs_as_the_size_grows_and_shrinks(tmp_path, one_thread):
    """Sizes 32, 16, 48, 8: every epoch serves all 96 samples (a count taken at 32 would stop the epoch at
    16 after 3 batches), and validation runs after each epoch's last batch."""
    strategy = s.build("epoch", b_init=32, milestones={1: 16, 2: 48, 3: 8}, min_batch=8, max_batch=64)
    model = fit(tmp_path, AdaptiveBatchSize(strategy, lr_rule="linear"), 4, validate=True)
    assert sizes_per_epoch(model.seen) == {0: [32] * 3, 1: [16] * 6, 2: [48] * 2, 3: [8] * 12}
    assert model.validations == [0, 1, 2, 3]
    assert [d.new for d in strategy.history] == [16, 48, 8, 8]
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 8 / 32)


def test_each_decision_is_logged_with_its_reason(tmp_path, one_thread):
    strategy = s.build("loss", b_init=16, delta="diff", max_batch=64)
    fit(tmp_path, AdaptiveBatchSize(strategy), 3)
    with open(tmp_path / "logs" / "version_0" / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    rows = [row for row in table if row["batch_size"]]
    reasons = [row["batch_size_reason"] for row in table if row["batch_size_reason"]]
    assert [int(float(row["batch_size"])) for row in rows] == [d.new for d in strategy.history]
    assert reasons == [d.reason for d in strategy.history]
    assert float(rows[-1]["lr"]) == pytest.approx(0.05 * (strategy.batch_size / 16) ** 0.5)   # sqrt rule


class NumbersOnly(Logger):
    """A logger that refuses text, as TensorBoard's does; it keeps the numbers it is given."""

    name, version = "numbers", 0

    def __init__(self):
        super().__init__()
        self.metrics: list[dict] = []

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        if any(isinstance(value, str) for value in metrics.values()):
            raise ValueError(f"you tried to log {metrics} which is currently not supported")
        self.metrics.append(metrics)


def test_a_logger_that_refuses_text_gets_the_numbers_and_one_warning(tmp_path, one_thread):
    strategy = s.build("linear", b_init=8, a=8, max_batch=64)
    logger = NumbersOnly()
    with pytest.warns(UserWarning, match="NumbersOnly logs numbers only") as caught:
        fit(tmp_path, AdaptiveBatchSize(strategy), 3, logger=logger)
    assert sum("logs numbers only" in str(w.message) for w in caught) == 1
    assert [m["batch_size"] for m in logger.metrics if "batch_size" in m] == [16, 24, 32]


def test_step_mode_decides_every_n_batches_and_shows_two_batches_later(tmp_path, one_thread):
    """Lightning fetches one batch ahead: the decision after batch k sets the size of batch k + 2."""
    strategy = s.build("linear", b_init=4, a=4, min_batch=4, max_batch=64)
    model = fit(tmp_path, AdaptiveBatchSize(strategy, mode="step", every_n_batches=2), 1)
    sizes = [size for _epoch, size in model.seen]
    after = [4] + [d.new for d in strategy.history]       # the size after 0, 1, 2, ... decisions
    # decision j (1-based) follows batch k = 2j - 1 (0-based) and first shows in batch k + 2
    expected = [after[(k - 1) // 2] if k >= 3 else 4 for k in range(len(sizes))]
    assert sizes[:-1] == expected[:-1] and sizes[-1] <= expected[-1]      # the last batch may be short
    assert sum(sizes) == N and len(strategy.history) == len(sizes) // 2


def test_checkpoint_round_trip_resumes_the_same_run(tmp_path, one_thread):
    """4 epochs in one go, and 2 epochs + a checkpoint + 2 resumed epochs in a fresh callback: the same
    batches, decisions and LR."""
    def adaptive():
        return AdaptiveBatchSize(s.build("loss", b_init=8, delta="diff", max_batch=64))

    whole = fit(tmp_path / "whole", adaptive(), 4)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = fit(tmp_path / "first", adaptive(), 2, checkpoint)
    saved = torch.load(checkpoint.last_model_path, weights_only=True)["callbacks"]["AdaptiveBatchSize"]
    assert saved == first.adaptive.state_dict()
    assert saved["sampler"] == {"epoch": 2, "samples_served": 0}
    resumed = fit(tmp_path / "resumed", adaptive(), 4, ckpt_path=checkpoint.last_model_path)
    assert first.seen + resumed.seen == whole.seen
    assert resumed.adaptive.strategy.state_dict() == whole.adaptive.strategy.state_dict()
    assert len({d.new for d in whole.adaptive.strategy.history}) > 1, "no change of size: the test shows nothing"
    lr = [model.trainer.optimizers[0].param_groups[0]["lr"] for model in (whole, resumed)]
    assert lr[0] == pytest.approx(lr[1])


def test_a_foreign_loader_a_bad_mode_or_a_bad_state_is_refused(tmp_path, one_thread):
    class Plain(Regression):
        def train_dataloader(self):
            return DataLoader(samples(), batch_size=8)

    adaptive = AdaptiveBatchSize(s.build("linear", b_init=8, a=8))
    with pytest.raises(TypeError, match=r"pass callback.loader\(dataset\) to fit"):
        L.Trainer(max_epochs=1, callbacks=[adaptive], logger=False, enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False).fit(Plain(adaptive))
    with pytest.raises(ValueError, match="mode='batch'"):
        AdaptiveBatchSize(s.build("linear"), mode="batch")
    with pytest.raises(TypeError, match="not a labkit strategy"):
        AdaptiveBatchSize(32)
    with pytest.raises(ValueError, match="needs the dict"):
        adaptive.load_state_dict({"batch_size": 8})
    with pytest.raises(TypeError, match="no len"):
        len(adaptive.loader(samples()))


# -- DDP: Lightning's ddp strategy in two gloo processes --------------------------------------------------
WORLD = 2


def _ddp_worker(rank: int, port: int, tmp: str) -> None:
    out = {}
    try:
        torch.set_num_threads(1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                          LOCAL_RANK=str(rank), NODE_RANK="0", GLOO_SOCKET_IFNAME="lo")
        strategy = s.build("loss", b_init=8, delta="diff", max_batch=64)
        # each rank its own data (seed=rank), so its own local losses
        model = fit(tmp, AdaptiveBatchSize(strategy), 4, seed=rank, devices=WORLD, strategy="ddp", logger=False)
        out = {"seen": model.seen, "state": strategy.state_dict(),
               "lr": model.trainer.optimizers[0].param_groups[0]["lr"]}
    except Exception:                                 # noqa: BLE001 - reported by the parent
        out["traceback"] = traceback.format_exc()
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump(out, f)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_ranks_agree_on_every_decision(tmp_path):
    port = free_port()
    ranks = spawn(_ddp_worker, (port, str(tmp_path)), WORLD, tmp_path)
    zero, one = ranks
    assert zero["state"] == one["state"] and zero["lr"] == one["lr"]
    assert zero["seen"] == one["seen"]                       # the same per-rank batch sizes, batch by batch
    sizes = sizes_per_epoch([tuple(pair) for pair in zero["seen"]])
    decided = [8] + [d["new"] for d in zero["state"]["history"]]
    for epoch, per_rank in sizes.items():          # each rank gets half of each global batch of the epoch
        assert set(per_rank[:-1]) <= {decided[epoch] // WORLD}
    assert len(set(decided)) > 1, "the strategy never changed the batch size: the test shows nothing"
