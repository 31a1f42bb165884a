"""labkit.batching: every sample once per epoch at fixed and changing sizes, normalisation, determinism."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from labkit.batching import DeviceBatcher, StrategyBatchSampler, epoch_spans
from labkit.strategies import Cyclical


def indexed(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A float dataset whose sample i is (i,) with label i: batches show which indices they hold."""
    return torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n)


def labels_of(batches) -> list[int]:
    return [i for _xb, yb in batches for i in yb.tolist()]


@pytest.mark.parametrize("batch_size", [1, 7, 32, 100, 1000])
def test_fixed_size_covers_every_sample_once(batch_size):
    batcher = DeviceBatcher(*indexed(100))
    for _epoch in range(2):
        batches = list(batcher.batches(batch_size))
        assert sorted(labels_of(batches)) == list(range(100))
        assert [len(yb) for _xb, yb in batches[:-1]] == [batch_size] * (len(batches) - 1)
        assert all(torch.equal(xb.view(-1), yb.float()) for xb, yb in batches)  # x and y stay paired


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), sizes=st.lists(st.integers(1, 64), min_size=1, max_size=20), drop_last=st.booleans())
def test_changing_sizes_cover_every_sample_once(n, sizes, drop_last):
    """The size is read before every batch: batch k has sizes[k mod len] samples (the last one is cut)."""
    cycle = itertools.cycle(sizes)
    asked = []

    def next_size():
        asked.append(next(cycle))
        return asked[-1]

    batches = list(DeviceBatcher(*indexed(n), drop_last=drop_last).batches(next_size))
    got = [len(yb) for _xb, yb in batches]
    seen = labels_of(batches)
    assert len(seen) == len(set(seen))
    if drop_last:
        assert got == asked[:len(got)] and n - len(seen) < asked[-1]
    else:
        assert sorted(seen) == list(range(n)) and got[:-1] == asked[:len(got) - 1]


def test_strategy_object_changes_size_mid_epoch():
    strategy = Cyclical(b_init=8, max_batch=32, period=4)
    batcher = DeviceBatcher(*indexed(500))
    sizes = []
    for _xb, yb in batcher.batches(strategy):
        sizes.append(len(yb))
        strategy.step()
    assert len(set(sizes[:-1])) > 1 and sum(sizes) == 500


def test_normalisation_matches_manual_computation():
    x = torch.randint(0, 256, (50, 3, 4, 5), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    batcher = DeviceBatcher(x, torch.zeros(50, dtype=torch.long), mean, std, shuffle=False)
    (xb, _yb), = batcher.batches(50)
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert xb.dtype == torch.float32 and torch.allclose(xb, expected, atol=1e-5)


def test_float_data_is_not_rescaled_nor_modified():
    x, y = indexed(10)
    stored = x.clone()
    (xb, _), = DeviceBatcher(x, y, shuffle=False).batches(10)
    assert torch.equal(xb, stored)
    (xb, _), = DeviceBatcher(x, y, [1.0], [2.0], shuffle=False).batches(10)
    assert torch.allclose(xb, (stored - 1) / 2) and torch.equal(x, stored)


def test_seed_fixes_the_order_and_shuffle_false_keeps_it():
    def order(seed, shuffle=True):
        batcher = DeviceBatcher(*indexed(64), seed=seed, shuffle=shuffle)
        return [labels_of(batcher.batches(16)) for _epoch in range(2)]

    assert order(3) == order(3)
    assert order(3) != order(4)
    first, second = order(3)
    assert first != second  # a new permutation every epoch
    assert order(3, shuffle=False) == [list(range(64))] * 2


def test_len_and_num_samples():
    batcher = DeviceBatcher(*indexed(37))
    assert len(batcher) == batcher.num_samples == 37


@pytest.mark.parametrize("kwargs, match", [
    (dict(mean=[0.5]), "give both"),
    (dict(mean=[0.5, 0.5], std=[1.0, 1.0]), "expected one per channel, 1"),
    (dict(mean=[0.5], std=[0.0]), "must be > 0"),
])
def test_bad_normalisation_constants_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeviceBatcher(*indexed(4), **kwargs)


def test_bad_batch_sizes_and_shapes_are_named():
    batcher = DeviceBatcher(*indexed(4))
    with pytest.raises(ValueError, match="batch_size=0"):
        next(batcher.batches(0))
    with pytest.raises(ValueError, match="batch_size=-2"):
        next(batcher.batches(lambda: -2))
    with pytest.raises(ValueError, match="same N"):
        DeviceBatcher(torch.zeros(4, 1), torch.zeros(3))


@pytest.mark.parametrize("shuffle, drop_last", [(True, False), (False, False), (True, True)])
def test_pool_serves_only_its_samples_once_per_epoch(shuffle, drop_last):
    pool = torch.tensor([3, 41, 7, 0, 99, 12, 58])
    batcher = DeviceBatcher(*indexed(100), shuffle=shuffle, drop_last=drop_last)
    for _epoch in range(2):
        batches = list(batcher.batches(3, pool=pool))
        seen = labels_of(batches)
        assert all(torch.equal(xb.view(-1), yb.float()) for xb, yb in batches)
        if drop_last:
            assert len(seen) == 6 and len(set(seen)) == 6 and set(seen) < set(pool.tolist())
        elif shuffle:
            assert sorted(seen) == sorted(pool.tolist())
        else:
            assert seen == pool.tolist()  # no shuffle: the pool's own order


def test_pool_order_is_seeded_and_the_full_pool_matches_no_pool():
    def epochs(seed, pool):
        batcher = DeviceBatcher(*indexed(64), seed=seed)
        return [labels_of(batcher.batches(16, pool=pool)) for _epoch in range(2)]

    pool = torch.arange(10, 60)
    assert epochs(3, pool) == epochs(3, pool) and epochs(3, pool) != epochs(4, pool)
    first, second = epochs(3, pool)
    assert first != second and sorted(first) == sorted(second) == pool.tolist()
    assert epochs(3, torch.arange(64)) == epochs(3, None)  # the same draws from the generator


@pytest.mark.parametrize("pool, error, match", [
    (torch.tensor([], dtype=torch.long), ValueError, r"shape \(0,\).*non-empty 1-D"),
    (torch.zeros(2, 2, dtype=torch.long), ValueError, r"shape \(2, 2\).*1-D"),
    ([1, 2], TypeError, "pool is a list.*torch.tensor"),
    (torch.tensor([0.0, 1.0]), TypeError, "dtype torch.float32"),
    (torch.tensor([True, False, True, False]), TypeError, "dtype torch.bool.*nonzero"),
    (torch.tensor([0, 4, -1, 2]), ValueError, r"indices \[4, -1\] outside \[0, 3\]"),
])
def test_bad_pools_are_named(pool, error, match):
    with pytest.raises(error, match=match):
        next(DeviceBatcher(*indexed(4)).batches(2, pool=pool))


def test_epoch_spans_reads_the_size_once_per_batch():
    sizes = iter([3, 1, 10])
    assert list(epoch_spans(6, lambda: next(sizes))) == [(0, 3), (3, 4), (4, 6)]


class Settable:
    """The smallest strategy-like object: a batch size the test changes by hand."""

    def __init__(self, batch_size):
        self.batch_size = batch_size


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_in_dataloader_covers_every_index_once_when_size_changes(drop_last):
    dataset = TensorDataset(torch.arange(103))
    strategy = Settable(10)
    sampler = StrategyBatchSampler(strategy, len(dataset), seed=0, drop_last=drop_last)
    assert len(sampler) == (10 if drop_last else 11)
    for _epoch in range(2):
        strategy.batch_size = 10
        seen, sizes = [], []
        for (batch,) in DataLoader(dataset, batch_sampler=sampler):
            seen += batch.tolist()
            sizes.append(len(batch))
            strategy.batch_size = 10 + 7 * len(sizes)  # a new size before every batch
        assert len(seen) == len(set(seen))
        if drop_last:
            assert sizes == [10, 17, 24, 31] and len(seen) == 82
        else:
            assert sorted(seen) == list(range(103)) and sizes == [10, 17, 24, 31, 21]


def test_sampler_accepts_an_int_and_is_seeded():
    def epochs(seed):
        sampler = StrategyBatchSampler(16, 50, seed=seed)
        return [list(sampler) for _epoch in range(2)]

    assert epochs(0) == epochs(0) and epochs(0) != epochs(1)
    assert [len(b) for b in epochs(0)[0]] == [16, 16, 16, 2]
    assert list(StrategyBatchSampler(2, 4, shuffle=False)) == [[0, 1], [2, 3]]
    with pytest.raises(TypeError, match="batch_size='big'"):
        StrategyBatchSampler("big", 10)
