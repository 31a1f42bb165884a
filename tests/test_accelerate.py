"""adaptive_loader: an accelerate loader whose batch size follows a strategy, sharded over the processes,
with the strategy saved by accelerator.save_state. One CPU process; agree() over ranks is tested in
test_distributed.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

accelerate = pytest.importorskip("accelerate", reason="the accelerate recipe needs accelerate: pip install -e '.[dev]'")

import labkit.strategies as s  # noqa: E402
from labkit.integrations.accelerate import adaptive_loader, agree  # noqa: E402

N = 40


def dataset() -> TensorDataset:
    return TensorDataset(torch.arange(N), torch.arange(N) % 2)


def indices(loader) -> list[list[int]]:
    return [xb.tolist() for xb, _yb in loader]


def test_batches_follow_the_strategy_epoch_by_epoch_on_the_accelerator_device(one_thread):
    accelerator = accelerate.Accelerator(cpu=True)
    strategy = s.build("linear", b_init=4, a=4, min_batch=4, max_batch=16)
    loader = adaptive_loader(accelerator, dataset(), strategy, seed=3)
    epochs = []
    for _epoch in range(3):
        batches = indices(loader)
        epochs.append(batches)
        agree(strategy)                              # one process: strategy.step()
    assert [[len(b) for b in batches] for batches in epochs] == [[4] * 10, [8] * 5, [12, 12, 12, 4]]
    for e, batches in enumerate(epochs):             # every sample once, epoch e's order drawn from seed + e
        assert [i for b in batches for i in b] == loader.batch_sampler.epoch_order(e)
    xb, _yb = next(iter(loader))
    assert xb.device == accelerator.device


def test_a_size_changed_inside_an_epoch_shows_two_batches_later(one_thread):
    """accelerate's loader looks one batch ahead: a decision after batch k first shows in batch k + 2."""
    strategy = s.build("linear", b_init=2, a=2, min_batch=2, max_batch=8)
    sizes = []
    for xb, _yb in adaptive_loader(accelerate.Accelerator(cpu=True), dataset(), strategy, shuffle=False):
        sizes.append(len(xb))
        strategy.step()                              # after batch k the size is 2 (k + 2)
    assert sizes[:5] == [2, 2, 4, 6, 8] and sum(sizes) == N


def test_each_process_gets_its_half_of_every_global_batch():
    """adaptive_loader reads num_processes, process_index and device from the accelerator."""
    strategy = SimpleNamespace(batch_size=4)          # anything with a batch_size: the global batch
    loaders = [adaptive_loader(SimpleNamespace(num_processes=2, process_index=rank, device=torch.device("cpu")),
                               dataset(), strategy, seed=1) for rank in range(2)]
    zero, one = (indices(loader) for loader in loaders)
    assert [len(b) for b in zero] == [len(b) for b in one] == [2] * 10
    order = loaders[0].batch_sampler.epoch_order(0)
    assert [a + b for a, b in zip(zero, one, strict=True)] == [order[i:i + 4] for i in range(0, N, 4)]
    strategy.batch_size = 7
    with pytest.raises(ValueError, match="batch_size=7 is not a multiple of num_replicas=2"):
        indices(loaders[0])


def test_save_state_and_load_state_keep_the_strategy(tmp_path, one_thread):
    def run():
        accelerator = accelerate.Accelerator(cpu=True)
        strategy = s.build("loss", b_init=8, delta="diff", max_batch=64)
        accelerator.register_for_checkpointing(strategy)
        return accelerator, strategy

    accelerator, strategy = run()
    for loss in (2.0, 1.5, 1.0):
        agree(strategy, loss=loss)
    accelerator.save_state(tmp_path / "state")
    accelerator, restored = run()
    accelerator.load_state(tmp_path / "state")
    assert restored.state_dict() == strategy.state_dict() and restored.batch_size == 32
