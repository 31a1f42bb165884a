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
