"""labkit.memory: both searches against fake steps with a known threshold (bisection) or a known memory curve
(affine), the OOM handling, state restored, and the CPU cap on a real model."""
import logging
import math
import weakref
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from labkit import memory
from labkit.memory import (MemoryCapExceeded, NothingFits, StepMemory, format_bytes, max_batch_that_fits,
                           memory_capacity, probe_step)
from labkit.step import TrainStep


def oom_above(threshold: int, tried: list):
    """A step that runs out of CUDA memory at ``threshold`` examples and more."""
    def step(batch):
        tried.append(batch)
        if batch >= threshold:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {batch} MiB")
        return batch * 2.0**20
    return step


@settings(max_examples=200, deadline=None)
@given(threshold=st.integers(1, 20_000), multiple_of=st.sampled_from([1, 8, 32]),
       start_multiples=st.integers(1, 64), extra=st.integers(0, 20_000))
def test_search_finds_the_largest_multiple_below_the_threshold(threshold, multiple_of, start_multiples, extra):
    start = start_multiples * multiple_of
    limit = start + extra
    tried = []
    top = limit // multiple_of * multiple_of
    expected = min(top, (threshold - 1) // multiple_of * multiple_of)
    with patch.object(memory, "free_memory", lambda: None):      # gc.collect() takes 0.1 s here
        if expected == 0:
            with pytest.raises(NothingFits, match=f"even {multiple_of} examples ran out of memory"):
                max_batch_that_fits(oom_above(threshold, tried), start, limit, multiple_of=multiple_of,
                                    method="bisect")
        else:
            probe = max_batch_that_fits(oom_above(threshold, tried), start, limit, multiple_of=multiple_of,
                                        method="bisect")
            assert probe.max_batch == expected and probe.limited == (expected == top)
            assert [t.batch for t in probe.trials] == tried
    assert len(tried) == len(set(tried)) and all(b % multiple_of == 0 and b <= top for b in tried)
    assert len(tried) <= 2 * math.ceil(math.log2(top / multiple_of)) + 2      # O(log): grow, then bisect


def test_search_log_lines_and_table(caplog):
    with caplog.at_level(logging.INFO, logger="labkit.memory"):
        probe = max_batch_that_fits(oom_above(1000, []), start=256, limit=4096, method="bisect")
    assert probe.max_batch == 992
    lines = caplog.messages
    assert lines[0] == "batch 256 fits (256 MiB peak), trying 512"
    assert lines[2] == "batch 1024 does not fit (CUDA out of memory. Tried to allocate 1024 MiB), trying 768"
    assert lines[-1] == "largest batch that fits: 992, after 9 tries"
    table = probe.table()
    assert list(table.columns) == ["batch", "fits", "peak_mb", "error"]
    assert table.batch.tolist()[:4] == [256, 512, 1024, 768] and table.fits.sum() == 6


def peaking(peak, runs_up_to: float, tried: list):
    """A step whose peak memory is ``peak(batch)`` bytes; above ``runs_up_to`` bytes it runs out of memory."""
    def step(batch):
        tried.append(batch)
        if peak(batch) > runs_up_to:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {peak(batch):.0f} bytes")
        return peak(batch)
    return step


def both_searches(peak, capacity: float, runs_up_to: float | None = None, start: int = 256):
    """(bisection, affine search told ``capacity``) on a step that runs up to ``runs_up_to`` (default: capacity)."""
    runs_up_to = capacity if runs_up_to is None else runs_up_to
    with patch.object(memory, "free_memory", lambda: None):
        truth = max_batch_that_fits(peaking(peak, runs_up_to, []), start, 2**20, method="bisect")
        tried = []
        found = max_batch_that_fits(peaking(peak, runs_up_to, tried), start, 2**20, capacity_bytes=capacity)
    assert [t.batch for t in found.trials] == tried
    assert next(t for t in found.trials if t.batch == found.max_batch).fits      # it returns a size that ran
    return truth, found


@settings(max_examples=200, deadline=None)
@given(fixed=st.floats(1e6, 1e11), per_example=st.floats(1e3, 1e8), true_max=st.integers(600, 200_000),
       start=st.sampled_from([8, 32, 256]))
def test_affine_search_of_an_affine_step_lands_within_1_percent_in_5_tries(fixed, per_example, true_max, start):
    truth, found = both_searches(lambda batch: fixed + per_example * batch, fixed + per_example * (true_max + 0.5),
                                 start=start)
    assert truth.max_batch == true_max // 8 * 8
    assert 0.99 * truth.max_batch <= found.max_batch <= truth.max_batch and len(found.trials) <= 5
    assert len(found.trials) <= 4 or true_max < 10_000       # a small maximum: multiples of 8 cost a refinement


@pytest.mark.parametrize("curve, share", [("convex", 0.01), ("convex", 0.03), ("convex", 0.05),
                                         ("concave", 0.03), ("fragmented", 0.01), ("fragmented", 0.03)])
def test_affine_search_verifies_and_refines_a_curve_that_is_not_a_line(curve, share):
    """convex/concave: peak = a + b·B ± c·B², the B² term ``share`` of the capacity at B = 28000;
    fragmented: an affine step that fails ``share`` below the capacity the search is told."""
    a, b, capacity = 1e9, 5e6, 141e9
    c = {"convex": 1, "concave": -1, "fragmented": 0}[curve] * share * capacity / 28000**2
    truth, found = both_searches(lambda batch: a + b * batch + c * batch**2, capacity,
                                 (1 - share) * capacity if curve == "fragmented" else capacity)
    assert 0.98 * truth.max_batch <= found.max_batch <= truth.max_batch
    assert len(found.trials) <= 5 < len(truth.trials) - 10


def test_affine_search_when_nothing_fits_says_so_once():
    with pytest.raises(NothingFits, match=r"^no batch fits: even 8 examples ran out of memory \(CUDA out of memory"):
        both_searches(lambda batch: 1e9 + 1e6 * batch, capacity=5e8)


def test_memory_capacity_is_the_cap_or_the_device():
    assert memory_capacity("cpu") == math.inf and memory_capacity("cpu", 2**20) == 2**20


def test_memory_is_freed_after_the_failed_step_is_gone(monkeypatch):
    refs, seen = [], []

    def step(batch):
        activations = torch.ones(1000)               # what a failed step leaves behind
        refs.append(weakref.ref(activations))
        if batch > 64:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(memory, "free_memory", lambda: seen.append(refs[-1]() is None))
    assert max_batch_that_fits(step, start=32, limit=1024, method="bisect").max_batch == 64
    assert seen == [True] * 4                        # 128, 96, 80, 72 failed; each freed after release


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def batches(size):
    generator = torch.Generator().manual_seed(size)
    return torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def snapshot(model, optimizer):
    return ({k: v.clone() for k, v in model.state_dict().items()}, repr(optimizer.state_dict()))


@pytest.mark.parametrize("error", [ValueError("shapes do not match"), RuntimeError("CUDA error: device-side assert")])
def test_other_errors_are_raised_and_the_state_still_restored(error):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weights, optimizer_state = snapshot(model, optimizer)
    train = probe_step(TrainStep(model, optimizer), batches)

    def step(batch):
        if batch == 64:
            raise error
        return train(batch)

    with pytest.raises(type(error), match=str(error)):
        max_batch_that_fits(step, start=16, limit=1024, restore=(model, optimizer), method="bisect")
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert repr(optimizer.state_dict()) == optimizer_state


def test_cpu_cap_binds_at_the_step_memory_model_and_probing_trains_nothing():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weights, optimizer_state = snapshot(model, optimizer)
    estimate = StepMemory.of(model, batches(1)[0])
    assert estimate.fixed_bytes == memory.PARAMETER_COPIES * 4 * sum(p.numel() for p in model.parameters())
    # per example: the input and every leaf's output (64 + 64 + 32 + 32 + 32 + 10 floats), doubled
    assert estimate.per_example_bytes == memory.ACTIVATION_FACTOR * 4 * (64 + 64 + 3 * 32 + 10)
    cap = estimate(300) + 1
    step = probe_step(TrainStep(model, optimizer), batches, memory_cap_bytes=cap)
    probe = max_batch_that_fits(step, start=8, limit=4096, restore=(model, optimizer), method="bisect")
    affine = max_batch_that_fits(step, start=8, limit=4096, restore=(model, optimizer), capacity_bytes=cap)
    assert probe.max_batch == affine.max_batch == 296 and not probe.limited
    assert len(affine.trials) <= 4 < len(probe.trials)
    failed = [t for t in probe.trials if not t.fits]
    assert failed and all("more than the cap" in t.error for t in failed)
    assert all(t.peak_bytes == pytest.approx(estimate(t.batch)) for t in probe.trials if t.fits)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())      # BN statistics too
    assert repr(optimizer.state_dict()) == optimizer_state
    assert all(p.grad is None for p in model.parameters())


def test_probe_step_trains_and_raises_the_cap_before_allocating():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    built = []

    def batch_of(size):
        built.append(size)
        return batches(size)

    step = probe_step(TrainStep(model, optimizer), batch_of, memory_cap_bytes=StepMemory.of(model, batches(1)[0])(100))
    before = model[1].weight.clone()
    step(50)
    assert not torch.equal(before, model[1].weight)              # a real optimizer step
    with pytest.raises(MemoryCapExceeded, match=r"batch 200 needs about .* more than the cap"):
        step(200)
    assert 200 not in built                                      # refused before the batch was built


@pytest.mark.parametrize("kwargs, words", [
    ({"start": 12, "limit": 64}, "start=12 is not a multiple of multiple_of=8: use start=16"),
    ({"start": 128, "limit": 64}, "start=128 is out of range"),
    ({"start": 8, "limit": 64, "multiple_of": 0}, "multiple_of=0 is out of range"),
    ({"start": 8, "limit": 4}, "limit=4 is out of range"),
    ({"method": "golden"}, "method='golden' is not allowed: expected one of 'affine', 'bisect'"),
    ({"capacity_bytes": None}, "method='affine' needs capacity_bytes.*or use method='bisect'"),
    ({"capacity_bytes": -1}, "capacity_bytes=-1 is out of range"),
    ({"margin": 1}, "margin=1 is out of range"),
    ({"max_trials": 2}, "max_trials=2 is out of range"),
    ({}, r"needs the step's peak memory, but try_step\(32\) returned None"),
])
def test_bad_arguments_name_the_value(kwargs, words):
    with pytest.raises(ValueError, match=words):
        max_batch_that_fits(lambda batch: None, **{"capacity_bytes": 2**30, **kwargs})


def test_format_bytes():
    assert [format_bytes(n) for n in (512, 1536, 3.2 * 2**30, math.nan)] == ["512 B", "1.5 KiB", "3.2 GiB", "unknown"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_out_of_memory_is_caught_and_released():
    device = torch.device("cuda")
    baseline = torch.cuda.memory_allocated(device)
    free, total = torch.cuda.mem_get_info(device)

    def step(gib):                                   # "batch" = GiB allocated; above the free memory: OOM
        block = torch.empty(gib * 2**30, dtype=torch.uint8, device=device)
        return float(block.nbytes)

    probe = max_batch_that_fits(step, start=1, limit=2 * total // 2**30, multiple_of=1, method="bisect")
    assert 0 < probe.max_batch <= free / 2**30 and not probe.limited
    assert any("out of memory" in t.error.lower() for t in probe.trials if not t.fits)
    assert torch.cuda.memory_allocated(device) == baseline


def test_memory_verdict_by_hand():
    import pandas as pd

    from labkit.memory import memory_verdict

    history = pd.DataFrame(dict(batch_size=[512, 1024, 1024], oom_retries=[1, 1, 0],
                                peak_mem_mb=[1000.0, 1500.0, 1600.0], samples_per_s=[100.0, 200.0, 300.0],
                                test_acc=[0.1, 0.2, 0.3]))
    entry, lines = memory_verdict(history, budget_mb=2000)
    # settled at the last epoch's 1024; 1 + 1 retries; peak 1600 / 2000 = 80 %; (200 + 300) / 2 after epoch 1
    assert lines == ["settled at batch 1024 after 2 out-of-memory retries, peak 80 % of 2000 MiB"]
    assert entry == {"accuracy": "n/a (one run of 3 epochs, test accuracy 0.300)",
                     "time": "settled at batch 1024, 250 samples/s after epoch 1",
                     "cost / energy": "peak 1600 MiB = 80 % of the budget",
                     "caveat": "2 out-of-memory retries; no fixed-batch baseline was run"}
