"""labkit.serving: batches form as the window and max_batch say, every caller gets its own row exactly once,
errors reach every caller of a batch, close drains or cancels, the AIMD rule by hand, Poisson arrivals.

Timing is asserted only with generous bounds: the models here are fakes (x·2, a sleep) whose batching is
deterministic when requests are queued before the worker starts."""
import asyncio
import json
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labkit.serving import TimeWindowBatcher, WindowController, poisson_arrivals, run_load


def double(x):
    return x * 2


def samples(n: int) -> torch.Tensor:
    """Sample i is (i, −i): a row of the output shows which request it answers."""
    i = torch.arange(n, dtype=torch.float32)
    return torch.stack([i, -i], dim=1)


def sizes(batcher) -> list[int]:
    return [record.size for record in batcher.batches]


# -- batching ------------------------------------------------------------------------------------------

def test_queued_requests_split_by_max_batch_and_each_caller_gets_its_row():
    x = samples(50)
    batcher = TimeWindowBatcher(double, window_ms=1.0, max_batch=16)
    futures = [batcher.submit(row) for row in x]  # all queued before the worker starts
    with batcher:
        results = [f.result(timeout=5) for f in futures]
    assert sizes(batcher) == [16, 16, 16, 2]
    assert all(torch.equal(result, 2 * row) for result, row in zip(results, x))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 100), max_batch=st.integers(1, 40))
def test_queued_requests_make_full_batches_then_the_rest(n, max_batch):
    x = samples(n)
    batcher = TimeWindowBatcher(double, window_ms=0.1, max_batch=max_batch)
    futures = [batcher.submit(row) for row in x]
    batcher.close()  # serves the queue
    full, rest = divmod(n, max_batch)
    assert sizes(batcher) == [max_batch] * full + ([rest] if rest else [])
    assert torch.equal(torch.stack([f.result() for f in futures]), 2 * x)


def test_requests_within_one_window_share_a_batch():
    calls = []

    def model(x):
        calls.append(len(x))
        return x + 1

    x = samples(5)
    with TimeWindowBatcher(model, window_ms=300, max_batch=64) as batcher:
        started = time.perf_counter()
        futures = [batcher.submit(row) for row in x]
        results = [f.result(timeout=5) for f in futures]
        waited = time.perf_counter() - started
    assert calls == [5] and sizes(batcher) == [5]
    assert all(torch.equal(result, row + 1) for result, row in zip(results, x))
    assert 0.25 < waited < 3.0  # the batch stayed open for the window: max_batch was not reached


def test_full_batch_does_not_wait_for_the_window():
    with TimeWindowBatcher(double, window_ms=60_000, max_batch=4) as batcher:
        futures = [batcher.submit(row) for row in samples(4)]
        assert [f.result(timeout=5)[0].item() for f in futures] == [0, 2, 4, 6]


def test_one_by_one_is_max_batch_1():
    x = samples(20)
    with TimeWindowBatcher(double, window_ms=50, max_batch=1) as batcher:
        results = [batcher.infer(row, timeout=5) for row in x]
    assert sizes(batcher) == [1] * 20
    assert torch.equal(torch.stack(results), 2 * x)


def test_many_threads_each_get_their_own_rows_exactly_once():
    x = samples(400)
    results = {}

    def caller(ids):
        for i in ids:
            results[i] = batcher.infer(x[i], timeout=10)
            time.sleep(0.0005 * (i % 3))

    with TimeWindowBatcher(double, window_ms=2, max_batch=16) as batcher:
        threads = [threading.Thread(target=caller, args=(range(t, 400, 8),)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(results) == list(range(400))
    assert all(torch.equal(results[i], 2 * x[i]) for i in range(400))
    assert sum(sizes(batcher)) == 400 and max(sizes(batcher)) <= 16
    assert all(r.wait_ms >= 0 and r.compute_ms >= 0 and r.error == "" for r in batcher.batches)


def test_runs_under_inference_mode_and_moves_to_device():
    seen = []

    def model(x):
        seen.append((torch.is_inference_mode_enabled(), x.device.type))
        return x

    with TimeWindowBatcher(model, window_ms=1, device="cpu") as batcher:
        batcher.infer(torch.zeros(3), timeout=5)
    assert seen == [(True, "cpu")]


def test_asyncio_front():
    x = samples(6)

    async def main():
        return await asyncio.gather(*(batcher.ainfer(row) for row in x))

    with TimeWindowBatcher(double, window_ms=20, max_batch=64) as batcher:
        results = asyncio.run(main())
    assert torch.equal(torch.stack(results), 2 * x)


# -- errors --------------------------------------------------------------------------------------------

def test_model_exception_reaches_every_caller_of_that_batch_only():
    def model(x):
        if (x[:, 0] == 13).any():
            raise ArithmeticError("request 13 is unlucky")
        return x

    batcher = TimeWindowBatcher(model, window_ms=1, max_batch=10)
    futures = [batcher.submit(row) for row in samples(30)]
    with batcher:
        outcomes = [f.exception(timeout=5) for f in futures]
    assert [isinstance(e, ArithmeticError) for e in outcomes] == [False] * 10 + [True] * 10 + [False] * 10
    assert [bool(r.error) for r in batcher.batches] == [False, True, False]  # the worker went on serving


def test_wrong_number_of_output_rows_is_an_error_for_the_callers():
    batcher = TimeWindowBatcher(lambda x: x[:1], window_ms=1, max_batch=3)
    futures = [batcher.submit(row) for row in samples(3)]
    with batcher:
        with pytest.raises(ValueError, match="one row per request: got shape \\(1, 2\\) for a batch of 3"):
            futures[0].result(timeout=5)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"window_ms": 0}, ValueError, "window_ms=0 is out of range"),
    ({"window_ms": -5}, ValueError, "window_ms=-5 is out of range"),
    ({"max_batch": 0}, ValueError, "max_batch=0 is out of range"),
    ({"max_batch": 2.5}, TypeError, "max_batch=2.5 must be an integer"),
    ({"window_ms": 2, "controller": WindowController(10)}, ValueError, "start it there"),
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        TimeWindowBatcher(double, **kwargs)


def test_bad_submissions_and_life_cycle():
    batcher = TimeWindowBatcher(double)
    with pytest.raises(TypeError, match="callable"):
        TimeWindowBatcher("model")
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        batcher.submit([1.0, 2.0])
    batcher.submit(torch.zeros(2))
    with pytest.raises(ValueError, match=r"shape \(3,\) but this batcher serves samples of shape \(2,\)"):
        batcher.submit(torch.zeros(3))
    batcher.start()
    with pytest.raises(RuntimeError, match="already called"):
        batcher.start()
    batcher.close()
    with pytest.raises(RuntimeError, match="submit\\(\\) after close"):
        batcher.submit(torch.zeros(2))
    with pytest.raises(RuntimeError, match="start\\(\\) after close"):
        batcher.start()
    batcher.close()  # a second close does nothing


def test_window_can_change_while_serving_but_stays_positive():
    with TimeWindowBatcher(double, window_ms=5) as batcher:
        batcher.window_ms = 0.5
        assert batcher.infer(torch.ones(1), timeout=5).item() == 2
        with pytest.raises(ValueError, match="window_ms=0 is out of range"):
            batcher.window_ms = 0


# -- close ---------------------------------------------------------------------------------------------

def slow(x):
    time.sleep(0.02)
    return x


def test_close_drains_queued_requests_even_if_never_started():
    batcher = TimeWindowBatcher(slow, window_ms=1, max_batch=4)
    futures = [batcher.submit(row) for row in samples(10)]
    batcher.close()
    assert all(f.done() and not f.cancelled() for f in futures)
    assert sizes(batcher) == [4, 4, 2]


def test_close_without_drain_cancels_what_is_queued():
    batcher = TimeWindowBatcher(slow, window_ms=1, max_batch=4)
    futures = [batcher.submit(row) for row in samples(10)]
    batcher.close(drain=False)
    assert all(f.cancelled() for f in futures) and batcher.batches == []
    with pytest.raises(CancelledError):
        futures[0].result()


def test_close_without_drain_finishes_the_running_batch():
    entered = threading.Event()

    def model(x):
        entered.set()
        return slow(x)

    batcher = TimeWindowBatcher(model, window_ms=1, max_batch=4).start()
    futures = [batcher.submit(row) for row in samples(12)]
    entered.wait(5)
    batcher.close(drain=False)
    served = [f for f in futures if not f.cancelled()]
    assert len(served) == sum(sizes(batcher)) >= 1
    assert all(torch.equal(f.result(), row) for f, row in zip(futures, samples(12)) if not f.cancelled())


def test_a_cancelled_future_is_skipped():
    batcher = TimeWindowBatcher(double, window_ms=1, max_batch=8)
    futures = [batcher.submit(row) for row in samples(5)]
    assert futures[2].cancel()
    with batcher:
        results = [f.result(timeout=5) for i, f in enumerate(futures) if i != 2]
    assert sizes(batcher) == [4]
    assert [r[0].item() for r in results] == [0, 2, 6, 8]


# -- controller ----------------------------------------------------------------------------------------

def test_controller_rule_by_hand():
    c = WindowController(10, window_ms=4, min_ms=0.5, max_ms=6, decrease=0.5, increase_ms=1, slack=0.8)
    p99s = [3, 5, 7.9, 8, 10, 12, 12, 12, 12, 1, 1]
    # below 8 → +1 (cap 6); [8, 10] → hold; above 10 → ×0.5 (floor 0.5)
    expected = [5, 6, 6, 6, 6, 3, 1.5, 0.75, 0.5, 1.5, 2.5]
    assert [c.step(p99_ms=p) for p in p99s] == pytest.approx(expected)
    assert [d.reason.split(":")[0] for d in c.history] == (["increase"] * 3 + ["hold"] * 2 + ["decrease"] * 4
                                                          + ["increase"] * 2)
    assert c.steps == 11 and c.history[5].old_ms == 6 and c.history[5].new_ms == 3


def test_controller_state_round_trip_mid_run():
    c = WindowController(8, window_ms=2)
    for p in (1, 9, 3):
        c.step(p99_ms=p)
    state = json.loads(json.dumps(c.state_dict()))
    d = WindowController(8)
    d.load_state_dict(state)
    assert d.state_dict() == c.state_dict() and d.history == c.history
    assert [c.step(p99_ms=p) for p in (20, 2, 7)] == [d.step(p99_ms=p) for p in (20, 2, 7)]


@pytest.mark.parametrize("kwargs, match", [
    ({"target_p99_ms": 0}, "target_p99_ms=0 is out of range"),
    ({"target_p99_ms": 10, "window_ms": 20}, r"window_ms=20 is out of range: expected a number in \[0.1, 10\]"),
    ({"target_p99_ms": 10, "min_ms": 5, "max_ms": 2, "window_ms": 3}, "min_ms=5 is greater than max_ms=2"),
    ({"target_p99_ms": 10, "decrease": 1}, "decrease=1 is out of range"),
    ({"target_p99_ms": 10, "slack": 0}, "slack=0 is out of range"),
    ({"target_p99_ms": 10, "every": 0}, "every=0 is out of range"),
])
def test_controller_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowController(**kwargs)
    with pytest.raises(ValueError, match="p99_ms=-1 is out of range"):
        WindowController(10).step(p99_ms=-1)


def test_batcher_feeds_its_controller():
    controller = WindowController(target_p99_ms=1.0, window_ms=0.8, min_ms=0.05, every=8)
    batcher = TimeWindowBatcher(slow, max_batch=4, controller=controller)
    futures = [batcher.submit(row) for row in samples(32)]
    with batcher:
        [f.result(timeout=5) for f in futures]
    # every request waits ≥ 20 ms for a batch of sleep(0.02), far above the 1 ms target, but every batch closed
    # full: the queue, not the window, made them late, so the window holds; its floor (one batch, 20 ms) is
    # capped at max_ms = target
    assert controller.steps == 4 and controller.window_ms == pytest.approx(1.0)
    assert all(d.reason.startswith("hold (overloaded)") and d.full_share == 1 for d in controller.history)
    assert all(d.floor_ms == pytest.approx(1.0) for d in controller.history)
    assert batcher.window_ms == controller.window_ms


# -- load generator ------------------------------------------------------------------------------------

def test_poisson_arrivals_mean_gap_and_determinism():
    times = poisson_arrivals(500.0, count=20_000, seed=3)
    gaps = np.diff(np.concatenate([[0.0], times]))
    assert np.all(gaps > 0)
    assert gaps.mean() == pytest.approx(1 / 500, rel=0.03)
    assert np.array_equal(times, poisson_arrivals(500.0, count=20_000, seed=3))
    assert not np.array_equal(times, poisson_arrivals(500.0, count=20_000, seed=4))
    within = poisson_arrivals(2000.0, duration_s=5.0, seed=0)
    assert within.max() < 5.0 and len(within) == pytest.approx(10_000, rel=0.05)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"rate": 0, "count": 5}, ValueError, "rate=0 is out of range"),
    ({"rate": 10}, ValueError, "exactly one of count= or duration_s="),
    ({"rate": 10, "count": 5, "duration_s": 1}, ValueError, "exactly one"),
    ({"rate": 10, "count": 0}, ValueError, "count=0 is out of range"),
])
def test_poisson_arrivals_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        poisson_arrivals(**kwargs)


def test_run_load_serves_every_request_and_batches_them():
    x = samples(64)
    with TimeWindowBatcher(double, window_ms=20, max_batch=64) as batcher:
        result = run_load(batcher, x, rate=2000, count=300, clients=2, seed=1)
    assert result.requests == 300 and result.errors == 0 and len(result.latencies_ms) == 300
    assert sum(sizes(batcher)) == 300 and result.batches == len(batcher.batches)
    assert result.mean_batch > 3  # ≈ 2000/s · 20 ms = 40 per window on an idle machine
    assert 0 < result.p50_ms <= result.p99_ms and result.throughput > 0
    assert result.refused == 0  # no max_queue: nothing is refused
    assert set(result.row()) == {"rate", "requests", "errors", "refused", "throughput", "p50_ms", "p99_ms", "mean_batch",
                                 "batches", "max_lag_ms", "p99_lag_ms", "p99_wait_ms", "p99_compute_ms",
                                 "generator"}
    assert result.generator == "threads" and 0 <= result.p99_lag_ms <= result.max_lag_ms


def test_run_load_from_client_processes_serves_each_request_once_never_early():
    answered = []

    def record(x):  # sample k is (k, -k): the answered rows say which requests reached the model
        answered.extend(int(v) for v in x[:, 0])
        return x * 2

    x = samples(500)
    with TimeWindowBatcher(record, window_ms=5, max_batch=32) as batcher:
        result = run_load(batcher, x, rate=3000, count=400, clients=2, seed=3, generator="process")
    assert sorted(answered) == list(range(400)) and result.errors == 0
    assert result.generator == "process" and result.requests == 400
    # a client sends at or after its request's scheduled time, on the clock this process reads too
    assert result.max_lag_ms >= result.p99_lag_ms >= 0
    assert result.p99_compute_ms > 0 and result.p99_wait_ms >= 0


def test_run_load_unknown_generator():
    with TimeWindowBatcher(double) as batcher, pytest.raises(ValueError, match="generator='greenlets'"):
        run_load(batcher, samples(4), rate=100, count=5, generator="greenlets")


def test_run_load_counts_failed_requests():
    def broken(x):
        raise RuntimeError("model is down")

    with TimeWindowBatcher(broken, window_ms=5) as batcher:
        result = run_load(batcher, samples(8), rate=1000, count=50)
    assert result.errors == 50 and all(r.error for r in batcher.batches)


def test_run_load_needs_a_started_batcher():
    with pytest.raises(RuntimeError, match="call start\\(\\) first"):
        run_load(TimeWindowBatcher(double), samples(4), rate=100, count=5)


# -- the benchmark command -----------------------------------------------------------------------------

def test_serve_bench_cli_writes_a_row_per_mode_with_its_bound(tmp_path, capsys):
    from labkit.cli import main

    out = tmp_path / "serving.csv"
    code = main(["serve-bench", "--quick", "--device", "cpu", "--load", "0.5", "--windows", "2", "4",
                 "--max-batch", "8", "--out", str(out)])
    assert code == 0 and "one-by-one" in capsys.readouterr().out
    table = pd.read_csv(out)
    assert list(table["mode"]) == ["one-by-one", "window", "window", "controller"]
    assert (table["generator"] == "threads").all() and (table["errors"] == 0).all()
    windows = table[table["mode"] == "window"]
    assert np.allclose(windows["p99_bound_ms"], windows["window_ms"] + table["isolated_batch_p99_ms"].iloc[0])
    assert table["isolated_batch_p99_ms"].iloc[0] > 0
    assert np.allclose(table["speedup"], table["throughput"] / table["throughput"].iloc[0])
    assert (table["p99_ok"] == (table["p99_ms"] <= table["p99_bound_ms"])).all()
    assert {"device_name", "torch", "commit", "command", "switch_interval_ms"} <= set(table.columns)


@pytest.mark.parametrize("args, words", [(["--windows", "0"], "windows=0"),
                                         (["--generators", "fibers"], "invalid choice: 'fibers'"),
                                         (["--switch-interval-ms", "-1"], "switch_interval_ms=-1")])
def test_serve_bench_cli_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys, args, words):
    from labkit.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["serve-bench", "--quick", "--device", "cpu", "--load", "0.5", "--out", str(tmp_path / "x.csv"), *args])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.csv").exists()


# -- warm-up in the worker thread ---------------------------------------------------------------------

def test_warmup_runs_every_batch_size_in_the_worker_thread_before_serving():
    calls = []

    def model(x):
        calls.append((len(x), threading.current_thread().name))
        return x * 2

    with TimeWindowBatcher(model, window_ms=1, max_batch=5, warmup=torch.zeros(2)) as batcher:
        assert [size for size, _ in calls] == [1, 2, 3, 4, 5]    # done when start() returned
        assert {thread for _, thread in calls} == {"TimeWindowBatcher"}
        assert torch.equal(batcher.infer(torch.tensor([1.0, -1.0])), torch.tensor([2.0, -2.0]))
        with pytest.raises(ValueError, match="warm-up"):
            batcher.submit(torch.zeros(3))                       # the warm-up sample fixed the shape
    assert batcher.batches[0].size == 1 and len(batcher.batches) == 1  # warm-up calls are not served batches
    assert batcher.warmup_s > 0


def test_a_failing_warmup_closes_the_batcher_with_the_reason():
    def broken(x):
        raise RuntimeError("weights missing")

    batcher = TimeWindowBatcher(broken, warmup=torch.zeros(2))
    with pytest.raises(RuntimeError, match="warm-up failed.*weights missing"):
        batcher.start()
    assert not batcher.running
    with pytest.raises(RuntimeError, match="after close"):
        batcher.submit(torch.zeros(2))


def test_judge_applies_the_target_from_five_times_the_capacity_rounded():
    from labkit.serving.bench import judge

    def rows(rate):
        return [{"rate": rate, "mode": "one-by-one", "throughput": 100.0, "p99_ms": 900.0, "p99_bound_ms": 1.0},
                {"rate": rate, "mode": "window", "throughput": 600.0, "p99_ms": 7.0, "p99_bound_ms": 8.0},
                {"rate": rate, "mode": "window", "throughput": 600.0, "p99_ms": 9.0, "p99_bound_ms": 8.0}]

    judged = judge(rows(round(5 * 100.4)), one_by_one_rps=100.4)   # 502 offered: 5x, rounded as the CLI does
    assert [r["meets_target"] for r in judged] == [None, True, False]
    assert [r["speedup"] for r in judged] == [1.0, 6.0, 6.0]
    assert [r["meets_target"] for r in judge(rows(450), one_by_one_rps=100.4)] == [None, None, None]
