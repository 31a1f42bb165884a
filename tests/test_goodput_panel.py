"""labkit.widgets.goodput: the panel's precomputed numbers are labkit.goodput's (checked against a brute-force
argmax too), its static view only looks them up and draws (its readout equals the Python one, in node and in
Chromium), it fetches nothing, and bad arguments fail with one message naming the value."""
from __future__ import annotations

import html
import itertools
import json
import math
import re
import shutil

import numpy as np
import pytest

from labkit.goodput import best_batch, efficiency, goodput, optimum
from labkit.strategies import adascale_gain
from labkit.strategies.goodput import GoodputBased
from labkit.widgets import GoodputPanel, StepTimeModel, goodput_panel, synthetic_gns, trajectory
from panel_checks import check_in_chromium, embedded_data, expected_lines, run_in_node


@pytest.fixture(scope="module")
def panel() -> GoodputPanel:
    return goodput_panel(base_batch=32, min_batch=4)


POINTS = [dict(b_noise=64, alpha=0.001, beta=1e-4, ceiling=128),      # B* 25: inside the range
          dict(b_noise=1024, alpha=0.01, beta=1e-5, ceiling=8192),    # B* 1012
          dict(b_noise=8192, alpha=0.05, beta=1e-6, ceiling=512),     # B* 20239: the ceiling binds
          dict(b_noise=64, alpha=0.001, beta=1e-4, ceiling=4096),
          dict(b_noise=2048, alpha=0.002, beta=3e-5, ceiling=256)]


@pytest.mark.parametrize("chosen", POINTS, ids=lambda p: "-".join(f"{v:g}" for v in p.values()))
def test_precomputed_point_is_labkit_goodput(panel, chosen):
    a, b, n, ceiling = chosen["alpha"], chosen["beta"], chosen["b_noise"], chosen["ceiling"]
    static = panel.series(**chosen)
    assert static["b_star"] == pytest.approx(math.sqrt(a * n / b), rel=1e-5)
    assert static["b_star"] == pytest.approx(optimum(a, b, n), rel=1e-5)
    assert static["best"] == best_batch(a, b, n, 4, ceiling, base_batch=32)
    sizes = np.arange(4, ceiling + 1)                             # brute force over every integer batch
    assert static["best"] == sizes[np.argmax(sizes / (a + b * sizes) * (n + 32) / (n + sizes))]
    best = static["best"]
    assert static["goodput"] == pytest.approx(goodput(best, a, b, n, 32), rel=1e-5)
    assert static["efficiency"] == pytest.approx(efficiency(best, 32, n), rel=1e-5)
    assert static["throughput"] == pytest.approx(best / (a + b * best), rel=1e-5)
    assert static["gain"] == pytest.approx(adascale_gain(best, 32, n), rel=1e-5)
    assert static["why"] == (1 if static["b_star"] > ceiling else 0)
    curves = static["curves"]
    for x, g, t, e in zip(curves["batch"], curves["goodput"], curves["throughput"], curves["efficiency"]):
        assert g == pytest.approx(goodput(x, a, b, n, 32), rel=1e-3)
        assert t == pytest.approx(x / (a + b * x), rel=1e-3) and e == pytest.approx(efficiency(x, 32, n), rel=1e-3)
    live = panel.point(**chosen)
    assert {k: live[k] for k in ("best", "why")} == {k: static[k] for k in ("best", "why")}


def test_every_grid_point_matches_and_the_html_carries_the_same_data(panel):
    data = embedded_data(panel.to_html())
    assert data == json.loads(json.dumps(panel.data()))
    assert data["batches"][0] == 1 and data["batches"][-1] == 2 * max(panel.options["ceiling"])
    for values in itertools.product(*panel.options.values()):
        chosen = dict(zip(panel.options, values))
        static, live = panel.series(**chosen), panel.point(**chosen)
        assert static["best"] == live["best"] and static["b_star"] == pytest.approx(live["b_star"], rel=1e-5)
        assert 4 <= static["best"] <= chosen["ceiling"]


def test_the_best_batch_moves_with_the_sliders_as_the_formula_says(panel):
    base = dict(b_noise=1024, alpha=0.01, beta=1e-5, ceiling=8192)
    star = panel.series(**base)["b_star"]
    assert panel.series(**{**base, "b_noise": 4096})["b_star"] == pytest.approx(2 * star, rel=1e-5)   # √4
    assert panel.series(**{**base, "alpha": 0.05})["b_star"] == pytest.approx(math.sqrt(5) * star, rel=1e-5)
    assert panel.series(**{**base, "beta": 1e-4})["b_star"] == pytest.approx(star / math.sqrt(10), rel=1e-5)
    assert panel.series(**{**base, "ceiling": 512})["best"] == 512
    assert "(at the memory ceiling)" in panel.readout(**{**base, "ceiling": 512})


def test_readout_is_one_line_with_the_numbers(panel):
    line = panel.readout(b_noise=1024, alpha=0.01, beta=1e-5, ceiling=8192)
    assert line == ("B* 1012 · best batch 1012: goodput 26100 samples/s = throughput 50300 × E 0.519 · "
                    "AdaScale lr × 16.4 (linear × 31.6)")
    assert "\n" not in line


def test_html_is_self_contained(panel):
    page = panel.to_html()
    assert 'data-panel="goodput"' in page
    assert not re.search(r"https?:|//[a-z0-9]", page, re.I), "the panel must not name an external address"
    assert not re.search(r"<(?:img|link|iframe|source)\b|\bsrc=|fetch\(|XMLHttpRequest|import\(", page)
    assert len(re.findall(r"<script>(.*?)</script>", page, re.S)) == 1
    assert page == goodput_panel(base_batch=32, min_batch=4).to_html()        # deterministic


def test_mimebundle_outside_a_kernel_is_static_html(panel):
    bundle = panel._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert bundle["text/plain"].startswith("GoodputPanel(base_batch=32, min_batch=4;")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_draws_and_writes_the_python_readout(panel, tmp_path):
    moves = [[0, 7], [3, 2], [1, 0], [2, 4]]                      # b_noise 8192, ceiling 512, α 1 ms, β 100 µs
    out = run_in_node(panel, moves, tmp_path, event="input")
    assert out["lines"] == expected_lines(panel, moves) and out["state"] == "ok"
    assert out["svg"].count('<path class="lk-goodput"') == 1 and 'class="lk-best"' in out["svg"]


def test_in_chromium_the_panel_renders_follows_a_slider_and_requests_nothing_else(panel, tmp_path):
    check_in_chromium(panel, "goodput", "ceiling", tmp_path, {"ceiling": 256})


def test_live_widget_builds_and_follows_its_controls(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    small = goodput_panel(b_noise=[256, 1024], alpha=[0.01], beta=[1e-5, 1e-4], ceiling=[256, 4096])
    box = small.widget()
    controls = {w.description: w for w in box.children[1].children}
    assert set(controls) == {"B_noise", "α (per step)", "β (per sample)", "memory ceiling (max B)"}
    assert [label for label, _ in controls["β (per sample)"].options] == ["10 µs", "100 µs"]
    controls["memory ceiling (max B)"].value = 256
    assert box.children[-1].value == html.escape(small.readout(ceiling=256))


# -- arguments -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, message", [
    (lambda: goodput_panel(b_noise=[0, 100]), ValueError, "b_noise=0 is out of range: expected a number > 0"),
    (lambda: goodput_panel(alpha=[-0.01]), ValueError, "alpha=-0.01 is out of range"),
    (lambda: goodput_panel(beta=["1e-5"]), TypeError, "beta='1e-5' must be a number, not a string"),
    (lambda: goodput_panel(beta=[float("nan")]), ValueError, "beta=nan is not finite"),
    (lambda: goodput_panel(min_batch=8, ceiling=[4, 64]), ValueError, "ceiling=4 is out of range: expected an "
                                                                      "integer >= 8"),
    (lambda: goodput_panel(ceiling=[256.5]), TypeError, "ceiling=256.5 must be an integer"),
    (lambda: goodput_panel(base_batch=0), ValueError, "base_batch=0 is out of range"),
    (lambda: goodput_panel(alpha=[]), ValueError, "alpha=[]: give at least one option"),
    (lambda: goodput_panel(ceiling=[512, 512]), ValueError, "ceiling=[512, 512] repeats an option"),
    (lambda: goodput_panel(initial={"alpha": 0.3}), ValueError, "initial alpha=0.3 is not on the grid"),
    (lambda: goodput_panel(initial={"gamma": 1}), ValueError, "initial gamma=1 is not on the grid"),
    (lambda: goodput_panel().series(alpha=0.3), ValueError, "alpha=0.3 is not on the panel's grid"),
    (lambda: goodput_panel().point(lr=0.1), TypeError, "'lr' is not a control of this panel"),
    (lambda: StepTimeModel(noise=0.9), ValueError, "noise=0.9 is out of range"),
])
def test_bad_arguments_say_what_to_do(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


# -- the chapter's synthetic run ---------------------------------------------------------------------------
def test_goodput_based_on_the_synthetic_step_time_reaches_the_best_batch_and_replays():
    clock = StepTimeModel(alpha=0.02, beta=2e-5)
    strategy = GoodputBased(64, max_batch=4096)
    sizes = trajectory(strategy, 12, {"gns": [900.0] * 12, "step_time": clock})
    assert sizes[-1] == best_batch(0.02, 2e-5, 900.0, 8, 4096) == 949
    noisy = StepTimeModel(alpha=0.02, beta=2e-5, noise=0.05, seed=1)
    first = GoodputBased(64, max_batch=4096)
    sizes = trajectory(first, 30, {"gns": synthetic_gns(30, first=200, last=3200), "step_time": noisy})
    again = GoodputBased(64, max_batch=4096)
    assert again.replay(first.readings) == sizes[1:]
    assert StepTimeModel(0.01, 1e-5, noise=0.1, seed=3)(100) == StepTimeModel(0.01, 1e-5, noise=0.1, seed=3)(100)
