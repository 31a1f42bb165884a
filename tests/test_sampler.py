"""StrategyBatchSampler as a drop-in BatchSampler (epochs, resume, DDP shards, prefetch lag) and StrategyBatches."""
from __future__ import annotations


import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, TensorDataset, default_collate

from labkit.batching import StrategyBatches, StrategyBatchSampler


class Settable:
    """A stand-in strategy whose batch size the test sets."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size


def flat(batches) -> list[int]:
    return [i for batch in batches for i in batch]


def test_is_a_batch_sampler_with_the_attributes_loaders_inspect():
    strategy = Settable(8)
    sampler = StrategyBatchSampler(strategy, 50, drop_last=True)
    assert isinstance(sampler, BatchSampler)
    assert list(sampler.sampler) == list(range(50)) and sampler.drop_last is True
    assert sampler.batch_size == 8 and len(sampler) == 6
    strategy.batch_size = 16  # batch_size and len() follow the strategy
    assert sampler.batch_size == 16 and len(sampler) == 3
    with pytest.raises(AttributeError):
        sampler.batch_size = 4  # the strategy owns the size


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_per_epoch(shuffle):
    sampler = StrategyBatchSampler(Settable(7), 50, shuffle=shuffle)
    epochs = [list(sampler) for _epoch in range(3)]
    for batches in epochs:
        assert sorted(flat(batches)) == list(range(50))
        assert [len(b) for b in batches] == [7] * 7 + [1]
    if shuffle:
        assert epochs[0] != epochs[1] != epochs[2]  # a full pass moves on to the next epoch
    else:
        assert flat(epochs[0]) == list(range(50)) and epochs[0] == epochs[1]


def test_same_seed_and_epoch_give_the_same_batches_and_set_epoch_changes_them():
    def batches(seed, epoch, **kwargs):
        sampler = StrategyBatchSampler(10, 40, seed=seed, **kwargs)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(0, 3) == batches(0, 3)
    assert batches(0, 3) != batches(0, 4) and batches(0, 3) != batches(1, 3)
    assert batches(5, 0) == batches(0, 5)  # the order of epoch e is drawn from seed + e
    generator = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert batches(None, 2, generator=generator()) == batches(None, 2, generator=generator())
    sampler = StrategyBatchSampler(10, 40)  # the epoch a full pass reaches is the epoch set_epoch names
    list(sampler)
    assert list(sampler) == batches(0, 1)


@pytest.mark.parametrize("stop_after", [0, 1, 3, 5])
def test_mid_epoch_state_round_trip_reproduces_the_rest_of_the_epoch(stop_after):
    """Sizes change every batch; a new sampler loaded from the state serves exactly the remaining batches."""
    sizes = [4, 6, 8, 5, 9, 7, 3, 11, 2, 13]

    def run(sampler, strategy, start):
        out = []
        for batch in sampler:
            out.append(batch)
            strategy.batch_size = sizes[(start + len(out)) % len(sizes)]
        return out

    strategy = Settable(sizes[0])
    sampler = StrategyBatchSampler(strategy, 61, seed=3)
    sampler.set_epoch(2)
    full = run(sampler, strategy, 0)
    assert sorted(flat(full)) == list(range(61))

    # the same schedule of sizes, stopped after stop_after + 1 batches, then resumed in a fresh sampler
    strategy = Settable(sizes[0])
    sampler = StrategyBatchSampler(strategy, 61, seed=3)
    sampler.set_epoch(2)
    served = []
    for batch in sampler:
        served.append(batch)
        strategy.batch_size = sizes[len(served) % len(sizes)]
        if len(served) == stop_after + 1:
            break
    state = sampler.state_dict()
    assert state == {"epoch": 2, "samples_served": sum(map(len, served))}
    resumed_strategy = Settable(strategy.batch_size)
    resumed = StrategyBatchSampler(resumed_strategy, 61, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning calls set_epoch on resume: the same epoch keeps the position
    rest = run(resumed, resumed_strategy, len(served))
    assert served + rest == full
    assert resumed.state_dict() == {"epoch": 3, "samples_served": 0}


def test_bad_state_is_refused_with_clear_errors():
    sampler = StrategyBatchSampler(8, 20)
    with pytest.raises(TypeError, match="expected the dict"):
        sampler.load_state_dict([2, 0])
    with pytest.raises(ValueError, match=r"keys \['epoch'\]"):
        sampler.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="keys"):
        sampler.load_state_dict({"epoch": 1, "samples_served": 0, "seed": 0})
    with pytest.raises(ValueError, match=r"state\['epoch'\]=-1"):
        sampler.load_state_dict({"epoch": -1, "samples_served": 0})
    with pytest.raises(ValueError, match=r"samples_served'\]=21 is out of range"):
        sampler.load_state_dict({"epoch": 0, "samples_served": 21})
    with pytest.raises(TypeError, match="must be an integer"):
        sampler.load_state_dict({"epoch": 0, "samples_served": "4"})
    assert sampler.state_dict() == {"epoch": 0, "samples_served": 0}  # a refused state changes nothing


@pytest.mark.parametrize("replicas", [2, 4])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_share_every_global_batch(replicas, drop_last):
    """Sizes grow between batches: every rank gets B // replicas of each global batch, disjoint, and the
    ranks' pieces together are the global batch a single-replica sampler serves."""
    n, sizes = 203, [8, 16, 24, 32, 40, 48, 56, 64]

    def run(**kwargs):
        strategy = Settable(sizes[0])
        sampler = StrategyBatchSampler(strategy, n, seed=1, drop_last=drop_last, **kwargs)
        sampler.set_epoch(4)
        out = []
        for batch in sampler:
            out.append(batch)
            strategy.batch_size = sizes[len(out) % len(sizes)]
        return out

    global_batches = run()
    ranks = [run(num_replicas=replicas, rank=r) for r in range(replicas)]
    assert len({len(batches) for batches in ranks}) == 1  # the same number of batches on every rank
    for k, pieces in enumerate(zip(*ranks)):
        assert len({len(p) for p in pieces}) == 1  # the same size on every rank
        union = flat(pieces)
        assert len(union) == len(set(union))  # no index on two ranks
        if len(global_batches[k]) == sizes[k % len(sizes)]:
            assert union == global_batches[k]  # a full global batch, split into contiguous pieces
        else:  # the epoch's short last batch: each rank gets len // replicas, the remainder is dropped
            assert len(union) == len(global_batches[k]) // replicas * replicas
            assert set(union) <= set(global_batches[k])
    served = flat(flat(ranks))
    assert len(served) == len(set(served)) and len(served) >= n - 3 - (64 if drop_last else 0)
    assert [len(b) for b in ranks[0]][:3] == [8 // replicas, 16 // replicas, 24 // replicas]


def test_distributed_batch_size_len_and_indivisible_sizes():
    strategy = Settable(12)
    sampler = StrategyBatchSampler(strategy, 50, num_replicas=4, rank=3)
    assert sampler.batch_size == 3 and len(sampler) == 4  # 50 = 4·12 + 2: the last 2 // 4 = 0, skipped
    assert [len(b) for b in sampler] == [3, 3, 3, 3]
    strategy.batch_size = 10
    with pytest.raises(ValueError, match="batch_size=10 is not a multiple of num_replicas=4.*use 8 or 12"):
        list(sampler)
    with pytest.raises(ValueError, match="not a multiple of num_replicas=4.*use 4"):
        StrategyBatchSampler(3, 50, num_replicas=4, rank=0).batch_size


def test_bad_replicas_and_seeds_give_clear_errors():
    with pytest.raises(ValueError, match=r"rank=2 is out of range for num_replicas=2: expected a rank in \[0, 1\]"):
        StrategyBatchSampler(8, 20, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas=0 is out of range"):
        StrategyBatchSampler(8, 20, num_replicas=0, rank=0)
    with pytest.raises(ValueError, match="rank=-1"):
        StrategyBatchSampler(8, 20, num_replicas=2, rank=-1)
    with pytest.raises(ValueError, match="give one of them"):
        StrategyBatchSampler(8, 20, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="must be a torch.Generator"):
        StrategyBatchSampler(8, 20, generator=3)
    with pytest.raises(ValueError, match="num_samples=0"):
        StrategyBatchSampler(8, 0)
    with pytest.raises(ValueError, match="epoch=-1"):
        StrategyBatchSampler(8, 20).set_epoch(-1)
    sampler = StrategyBatchSampler(8, 20)  # not initialised torch.distributed: one replica
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


def prefetch_lag(num_workers: int, prefetch_factor: int | None = None, change_after: int = 2) -> int:
    """Batches of the old size the loop still sees after setting a new size following batch ``change_after``."""
    strategy = Settable(4)
    dataset = TensorDataset(torch.arange(200))
    sampler = StrategyBatchSampler(strategy, len(dataset), shuffle=False)
    extra = {} if num_workers == 0 else {"num_workers": num_workers, "prefetch_factor": prefetch_factor}
    sizes = []
    for k, (batch,) in enumerate(DataLoader(dataset, batch_sampler=sampler, **extra)):
        sizes.append(len(batch))
        if k == change_after:
            strategy.batch_size = 8
    return sizes.index(8) - (change_after + 1)


@pytest.mark.parametrize("num_workers, prefetch_factor", [(0, None), (1, 1), (1, 2), (2, 2)])
def test_prefetch_lag_is_num_workers_times_prefetch_factor(num_workers, prefetch_factor):
    """num_workers=0 has no lag: the batch after the change has the new size. Workers draw index batches
    num_workers * prefetch_factor ahead, so that many batches of the old size come first (4 for 2 × 2)."""
    expected = 0 if num_workers == 0 else num_workers * prefetch_factor
    assert prefetch_lag(num_workers, prefetch_factor) == expected


class Stream(IterableDataset):
    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


def test_stream_batches_follow_the_strategy():
    strategy = Settable(3)
    sizes = []
    for batch in StrategyBatches(Stream(20), strategy):
        sizes.append(len(batch))
        strategy.batch_size += 1
    assert sizes == [3, 4, 5, 6, 2]
    assert list(StrategyBatches(range(10), 4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert list(StrategyBatches(range(10), 4, drop_last=True)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert list(StrategyBatches([], 4)) == []


def test_stream_batches_collate_into_tensors_in_a_dataloader():
    samples = [(torch.tensor([float(i)]), i) for i in range(10)]
    batches = StrategyBatches(samples, lambda: 4, collate_fn=default_collate)
    assert isinstance(batches, IterableDataset)
    out = list(DataLoader(batches, batch_size=None))
    assert [tuple(xb.shape) for xb, _yb in out] == [(4, 1), (4, 1), (2, 1)]
    assert torch.equal(torch.cat([yb for _xb, yb in out]), torch.arange(10))
    assert list(batches) != [] and len(list(batches)) == 3  # re-iterable: a new epoch each time
    with pytest.raises(TypeError, match="batch_size='x'"):
        StrategyBatches(samples, "x")


def test_state_taken_inside_a_single_process_loader_counts_the_batches_the_loop_saw():
    """num_workers=0 draws each index batch when the loop asks for it: the state resumes after the last one seen."""
    dataset = TensorDataset(torch.arange(30))
    sampler = StrategyBatchSampler(4, len(dataset), seed=2)
    seen = []
    for (batch,) in DataLoader(dataset, batch_sampler=sampler):
        seen += batch.tolist()
        if len(seen) == 12:
            state = sampler.state_dict()
            break
    assert state == {"epoch": 0, "samples_served": 12}
    resumed = StrategyBatchSampler(4, len(dataset), seed=2)
    resumed.load_state_dict(state)
    rest = [i for (batch,) in DataLoader(dataset, batch_sampler=resumed) for i in batch.tolist()]
    assert seen + rest == resumed.epoch_order(0)
