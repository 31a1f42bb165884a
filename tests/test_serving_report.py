"""labkit.serving.report against a small serve-bench table whose verdicts are worked out by hand."""
import pandas as pd
import pytest

from labkit.serving import report


def bench():
    """One setting, capacity 100/s one by one; loads 0.5× (50/s) and 4× (400/s)."""
    runs = [  # rate, mode, window, served/s, p50, p99, mean batch
        (50, "one-by-one", 0.0, 50.0, 1.0, 2.0, 1.0), (50, "window", 2.0, 49.5, 2.0, 3.0, 2.0),
        (50, "window", 10.0, 49.0, 6.0, 11.0, 5.0), (50, "controller", 4.0, 49.8, 3.0, 5.0, 2.5),
        (400, "one-by-one", 0.0, 100.0, 900.0, 2000.0, 1.0), (400, "window", 2.0, 380.0, 3.0, 30.0, 8.0),
        (400, "window", 10.0, 396.0, 8.0, 20.0, 30.0), (400, "controller", 12.0, 390.0, 9.0, 25.0, 28.0)]
    frame = pd.DataFrame(runs, columns=["rate", "mode", "window_ms", "throughput", "p50_ms", "p99_ms",
                                        "mean_batch"])
    return frame.assign(one_by_one_rps=100.0, generator="threads", target_p99_ms=10.0)


def test_settings_add_load_and_labels():
    [(name, rows)] = report.settings(bench())
    assert name == "generator=threads"
    assert rows.load.tolist() == [0.5] * 4 + [4.0] * 4
    assert rows.label.tolist()[:4] == ["one-by-one", "window 2 ms", "window 10 ms", "controller"]


def test_load_lines_by_hand():
    [(_, rows)] = report.settings(bench())
    lines = report.load_lines(rows)
    # 0.5×: within 2 % of 50/s means ≥ 49: all four; lowest p99 one-by-one (2 ms); best window: 2 ms (49.5/s)
    assert lines[1] == "  most served: one-by-one, window 2 ms, window 10 ms, controller (within 2% of 50/s)"
    assert lines[2] == "  lowest p99: one-by-one, 2.00 ms (p50 1.00 ms)"
    assert lines[3].startswith("  window 2 ms against one-by-one: 0.99× the throughput")
    assert lines[4] == "  modes with p99 <= the controller's target: one-by-one, window 2 ms"
    assert lines[5] == ("  controller: final window 4.00 ms, p99 5.00 ms (target 10 ms: met), 1.01× the "
                        "throughput of window 2 ms")
    # 4×: ≥ 388.08/s: window 10 ms and the controller; the best window is 10 ms (396/s), 3.96× one by one
    assert lines[7] == "  most served: window 10 ms, controller (within 2% of 396/s)"
    assert lines[9].startswith("  window 10 ms against one-by-one: 3.96× the throughput")
    assert lines[11].endswith("p99 25.00 ms (target 10 ms: missed), 0.98× the throughput of window 10 ms")


def test_verdict_and_table():
    [(_, rows)] = report.settings(bench())
    v = report.verdict(rows)
    assert v["time"] == "at 4.0× load: window 10 ms (most served, lowest p99), 4.0× one-by-one, p99 20.0 vs 2000 ms"
    assert v["caveat"] == "one run per setting; at 0.5× load the lowest p99 is one-by-one"
    table = report.load_table(rows)
    assert table["× one-by-one"].tolist() == pytest.approx([1, 0.99, 0.98, 0.996, 1, 3.8, 3.96, 3.9])
    assert report.verdict(rows[rows["mode"] != "one-by-one"]) is None


def full():
    """The whole table as serve-bench writes it, one generator: capacity 100/s one by one, 800/s in
    batches of 8 (1.0 ms per request, 1.7 ms per batch); s(1) = 1.5 ms, s(8) = 2.0 ms alone; loads 0.5×
    (50/s) and 5× (500/s), where the two windows test the claim."""
    runs = [  # rate, mode, w, served, speedup, p50, p99, wait, comp, lag, bound, ok, batch, target, meets, steps
        (50, "one-by-one", 0.0, 50, 1.0, 1.0, 2.0, 1.0, 1.2, 0.1, 1.5, False, 1.0, "", "", None),
        (50, "window", 20.0, 50, 1.0, 15.0, 21.0, 20.3, 1.5, 0.2, 22.0, True, 2.2, "", "", None),
        (50, "window", 40.0, 50, 1.0, 30.0, 43.0, 40.5, 1.8, 0.4, 42.0, False, 3.0, "", "", None),
        (50, "controller", 9.5, 50, 1.0, 7.0, 9.0, 8.0, 1.6, 0.3, 10.0, True, 1.4, "", "", 4),
        (500, "one-by-one", 0.0, 100, 1.0, 900.0, 1800.0, 1799.0, 1.4, 3.0, 1.5, False, 1.0, "", "", None),
        (500, "window", 20.0, 495, 4.95, 12.0, 21.5, 19.0, 1.9, 5.0, 22.0, True, 8.0, "5x", True, None),
        (500, "window", 40.0, 480, 4.8, 25.0, 47.0, 44.0, 2.5, 6.0, 42.0, False, 8.0, "5x", False, None),
        (500, "controller", 10.0, 490, 4.9, 8.0, 12.25, 10.0, 2.0, 4.0, 10.0, False, 7.5, "", "", 40)]
    frame = pd.DataFrame(runs, columns=[
        "rate", "mode", "window_ms", "throughput", "speedup", "p50_ms", "p99_ms", "p99_wait_ms",
        "p99_compute_ms", "p99_lag_ms", "p99_bound_ms", "p99_ok", "mean_batch", "target", "meets_target",
        "controller_steps"])
    return frame.assign(
        generator="threads", device="cuda", device_name="GPU X", torch="2.0", python="3.12", commit="abc1234",
        date="2026-01-01 00:00 UTC", command="python -m labkit serve-bench --device cuda --out=/tmp/b.csv "
        "--load 0.5 5", model="cnn", max_batch=8, duration_s=2.0, clients=2, seed=0, torch_threads=4,
        switch_interval_ms=5.0, one_by_one_rps=100.0, batch1_ms=1.0, batched_rps=800.0, batch_ms=1.7,
        isolated_batch1_p99_ms=1.5, isolated_batch_p99_ms=2.0, target_p99_ms=10.0)


def test_small_helpers():
    assert [report.yes_no(v) for v in (float("nan"), "", True, "True", 1.0, False, "False")] == \
        ["-", "-", "yes", "yes", "yes", "no", "no"]
    assert report.span(pd.Series([1.234, 1.236])) == "1.23 to 1.24"
    assert report.span(pd.Series([1.231, 1.234])) == "1.23"
    assert report.span(pd.Series([3.0, 51.84]), 0) == "3 to 52"
    assert report.reproduce("python -m labkit serve-bench --device cuda --load 0.5 5 --out=/x/y.csv --quick") \
        == "labkit serve-bench --load 0.5 5 --quick"
    assert report.reproduce("python other.py --out x") == "labkit serve-bench"


def test_prepare_load_and_formula():
    bench = report.prepare(full())
    assert bench.load.tolist() == [0.5] * 4 + [5.0] * 4
    # window runs: 1 + λw = 1 + 50 × 0.02 = 2, 1 + 50 × 0.04 = 3; at 500/s 11 and 21, capped at B_max = 8
    assert bench.formula.tolist()[1:3] == [2.0, 3.0]
    assert bench.formula.tolist()[5:7] == [8.0, 8.0]
    assert bench.formula[bench["mode"] != "window"].isna().all()


def test_header_lines_by_hand():
    lines = report.header_lines(full())
    assert lines[2] == "reproduce (from the repository root, on a GPU): labkit serve-bench --load 0.5 5"
    # c = (1.7 − 1.0) / (8 − 1) = 0.1 ms = 100 µs per sample, s0 = 1.0 − 0.1 = 0.9 ms; 800 / 100 = 8×
    assert lines[5] == ("batching raises the capacity 8.0×; s(B) ≈ s0 + c·B through both points: "
                        "s0 = 0.900 ms, c = 100.0 µs per sample")
    assert lines[6] == ("s for the bounds (p99 of lone calls): s(1) = 1.500 ms (1.5× the burst's time per "
                        "request), s(8) = 2.000 ms (1.2× the burst's time per batch)")
    mixed = full()
    mixed.loc[0, "commit"] = "def5678"
    with pytest.raises(ValueError, match="commit"):
        report.header_lines(mixed)


def test_run_table_rows():
    lines = report.run_table(full())
    assert lines[0] == "clients as threads (generator='threads'); p99s in ms; s(8) = 2.00 ms"
    assert len(lines) == 2 + 8 + 1 and lines[-1] == ""
    assert lines[2].split()[-2:] == ["-", "-"]                  # one-by-one: no formula, no claim
    assert lines[3].split()[-4:] == ["yes", "2.2", "2.0", "-"]  # ok, batch, 1 + λw, no claim at 0.5×
    assert lines[8].split()[-4:] == ["no", "8.0", "8.0", "no"]  # 500/s, 40 ms: formula capped, claim missed


def test_claim_lines_by_hand():
    lines = report.claim_lines(full())
    assert lines[0] == ("500/s (5.0× one by one), clients as threads, window 20 ms: 5.0× one-by-one throughput, "
                        "p99 21.50 ms vs bound 22.00 ms -> meets the claim")
    assert lines[1].endswith("p99 47.00 ms vs bound 42.00 ms -> misses the claim")
    # 500 offered over 100 served one by one: 5×; capacity 800 / 100 = 8×
    assert lines[2] == ("500/s, clients as threads: claim met by 1 of 2 windows (most speedup the offered rate "
                        "allows: 5.0×, the capacity: 8.0×)")
    # 1 + λw <= 4 and w >= s(8) = 2 ms: the two windows at 50/s, 2.2 vs 2 (10 %) and 3.0 vs 3 (0 %)
    assert lines[3] == ("mean batch vs 1 + λw where 1 + λw <= B_max/2 and w >= s(B_max): within 10% "
                        "(2 runs, median deviation 5%)")
    assert len(lines) == 4
    untested = report.claim_lines(full().assign(target="", meets_target=""))
    assert untested[0].startswith("No run in this table offered 5×")


def test_p99_lines_by_hand():
    lines = report.p99_lines(full())
    assert lines[0] == "window rows: ranges over the windows 20, 40 ms; s = 2.00 ms"
    # 0.5×: wait − w = 0.3 and 0.5; compute 1.5, 1.8; lag 0.2, 0.4; p99 21.0, 43.0; ok 1 of 2
    assert lines[2].split() == ["0.5", "threads", "0.30", "to", "0.50", "1.50", "to", "1.80", "0.20", "to",
                                "0.40", "21.0", "to", "43.0", "1", "of", "2"]
    assert lines[3].split()[2:5] == ["-1.00", "to", "4.00"]
    # one by one at 500/s: rate × 1.0 ms = 0.50, rate × s(1) = 500 × 1.5 ms = 0.75
    assert lines[-1].split() == ["5.0", "threads", "100", "1,800.0", "1.40", "0.50", "0.75"]


def test_controller_table_and_summary():
    lines = report.controller_table(full(), every=256)
    assert lines[0] == "target p99 10 ms, window bounds [0.1, 10] ms, a decision every 256 requests"
    assert lines[2].split() == ["50", "0.5", "threads", "4", "9.50", "9.00", "yes", "1.4", "50", "0.30"]
    assert lines[3].split()[5:7] == ["12.25", "no"] and len(lines) == 4
    summary = report.summary_lines(full())
    assert summary[1] == ("- claim at 500/s (5.0×), clients as threads: speedup 4.8 to 5.0×, met by 1 of 2 "
                          "windows (20 ms)")
    # at 500/s: lags 3, 5, 6, 4 ms; the batchers' p99s 21.5, 47, 12.25 ms
    assert summary[2] == ("- benchmark at 500/s (5.0×): clients' p99 lag 3 to 6 ms, p99 latency of the "
                          "batchers 12 to 47 ms")


def test_plot_rows():
    bench = pd.concat([full(), full().assign(generator="process", rate=lambda f: f.rate * 2)])
    [(label, one, win, ctl), (label5, *_)] = report.by_rate(bench, "threads")
    assert (label, label5) == ("50/s (0.5×)", "500/s (5.0×)")
    assert one.p99_ms.tolist() == [2.0] and win.window_ms.tolist() == [20.0, 40.0]
    assert ctl.window_ms.tolist() == [9.5]
    modes = report.by_mode(bench, "process")
    assert [(m, w, label) for m, w, label, _ in modes] == [
        ("one-by-one", None, "one by one"), ("window", 20.0, "window 20 ms"), ("window", 40.0, "window 40 ms"),
        ("controller", None, "controller (target 10 ms)")]
    assert modes[1][3].rate.tolist() == [100, 1000] and modes[1][3].throughput.tolist() == [50, 495]
