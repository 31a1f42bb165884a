"""labkit.widgets: the panel's precomputed trajectories are the strategies' own, the static HTML is
self-contained, and bad arguments fail with messages that say what to do."""
from __future__ import annotations

import itertools
import json
import math
import random
import re
import shutil
import subprocess

import pytest

import labkit.strategies as s
from labkit.widgets import (TrajectoryPanel, default_signals, noise_panel, synthetic_entropy, synthetic_gns,
                            synthetic_loss, trajectory, trajectory_panel)
from labkit.widgets.grid import strides
from labkit.widgets.static import KIT_JS


def stepped(name, params, signals, steps):
    """B_0 … B_steps by calling step() directly: the reference the panel must reproduce. A callable signal
    is a function of the current batch size (the memory model)."""
    strategy = s.build(name, **params)
    sizes = [strategy.batch_size]
    for k in range(steps):
        sizes.append(strategy.step(**{key: values(sizes[-1]) if callable(values) else values[k]
                                      for key, values in signals.items()}))
    return sizes


def embedded_data(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="([^"]+)-data">(.*?)</script>', html, re.S)
    assert match, "the static HTML has no embedded JSON data"
    return json.loads(match.group(2))


def all_points(panel: TrajectoryPanel):
    """Every combination of control values, as dicts."""
    names = [c.name for c in panel.controls]
    for index in itertools.product(*(range(c.size) for c in panel.controls)):
        chosen = {}
        for c, i in zip(panel.controls, index):
            chosen[c.name] = c.options(chosen)[i]
        yield dict(zip(names, (chosen[n] for n in names)))


# -- the grid equals the strategy ----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(s.STRATEGIES))
def test_every_strategy_gets_a_panel_whose_initial_trajectory_is_its_own(name):
    panel = trajectory_panel(name, steps=25)
    params = panel.params()
    assert panel.trajectory() == stepped(name, params, panel.signals, 25)


@pytest.mark.parametrize("name, ranges", [
    ("loss", dict(delta=["diff", "ema", "variance"], alpha=[0.1, 0.5, 0.9], window=[2, 4], max_batch=[256, 1024])),
    ("cyclical", dict(mode=["triangular", "cosine", "sawtooth"], period=[3, 7], b_init=[16, 64])),
    ("confidence", dict(low=[0.1, 0.3], high=[0.5, 0.7], change=["exponential", "linear"],
                        a={"exponential": [1.5, 2.0], "linear": [16, 48]})),
    ("exponential", dict(a=[0.8, 1.5, 2.0], multiple_of=[1, 8, 32])),
])
def test_sampled_grid_points_equal_step_outputs(name, ranges):
    panel = trajectory_panel(name, steps=30, **ranges)
    points = list(all_points(panel))
    for chosen in random.Random(0).sample(points, min(40, len(points))):
        params = panel.params(**chosen)
        try:
            expected = stepped(name, params, panel.signals, 30)
        except (ValueError, TypeError) as err:  # the strategy refuses this point: the panel shows why
            with pytest.raises(ValueError, match=re.escape(str(err)[:40])):
                panel.trajectory(**chosen)
        else:
            assert panel.trajectory(**chosen) == expected, chosen


def test_live_run_and_recorded_signals_agree_with_the_grid():
    losses = [2.0, 1.8, 1.9, 1.5, 1.4, 1.45, 1.2, 1.21, 1.0, 0.9, 1.1, 0.8]
    panel = trajectory_panel("loss", steps=12, signals={"loss": losses}, delta=["diff", "ema"], alpha=[0.2, 0.8])
    for chosen in all_points(panel):
        strategy = panel.run(**chosen)
        assert [strategy.b_init] + [d.new for d in strategy.history] == panel.trajectory(**chosen)
    assert panel.synthetic is False and panel.signals["loss"] == losses


def test_irrelevant_controls_share_one_computation():
    panel = trajectory_panel("loss", steps=10, delta=["diff", "ema"], alpha=[0.1, 0.5, 0.9], window=[2, 3],
                             b_init=32, min_batch=8, max_batch=256, change="exponential", a=2.0)
    # window only matters for "variance", which is not offered: it becomes fixed, not a control
    assert [c.name for c in panel.controls] == ["delta", "alpha"]
    assert len(panel.lookup) == 1 + 3  # diff once, ema for each alpha
    assert panel.trajectory(delta="diff", alpha=0.1) == panel.trajectory(delta="diff", alpha=0.9)


def test_javascript_index_formula_finds_the_same_trajectory():
    panel = trajectory_panel("loss", steps=20)
    data = embedded_data(panel.to_html())
    assert data["strides"] == strides(panel.controls)
    for chosen in random.Random(1).sample(list(all_points(panel)), 60):
        # what the JS does: option index per control, 0 where the control's `when` is false, dot strides
        key, picked = 0, {}
        for c, stride in zip(data["controls"], data["strides"]):
            options = c["values"][picked[c["depends"]]] if c["depends"] else c["values"]
            picked[c["name"]] = chosen[c["name"]]
            active = not c["when"] or picked[c["when"][0]] == c["when"][1]
            key += (options.index(chosen[c["name"]]) if active else 0) * stride
        ident = data["lookup"][str(key)]
        try:
            expected = panel.trajectory(**chosen)
        except ValueError as err:
            assert ident < 0 and data["errors"][-1 - ident] == str(err)
        else:
            assert data["runs"][ident] == expected


# -- the static HTML -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["loss", "cyclical", "confidence", "gns"])
def test_static_html_embeds_the_data_and_no_url(name):
    panel = trajectory_panel(name, steps=20, lr_rule=["linear", "sqrt"])
    html = panel.to_html()
    data = embedded_data(html)
    assert data["runs"] == panel.runs and data["steps"] == 20
    assert data["lr"]["rules"] == ["linear", "sqrt"]
    assert not re.search(r"https?://|//cdn|\bsrc=", html), "the panel must not load or link anything"
    assert "</script>" not in html.split('-data">', 1)[1].split("</script>", 1)[0]
    assert len(html) < 600_000


def test_static_html_is_deterministic_and_ids_differ_between_panels():
    a, b = trajectory_panel("linear", steps=10), trajectory_panel("linear", steps=10)
    c = trajectory_panel("linear", steps=11)
    assert a.to_html() == b.to_html()
    ids = {re.search(r'id="(labkit-panel-[0-9a-f]+)"', p.to_html()).group(1) for p in (a, c)}
    assert len(ids) == 2


def both_panels():
    """A trajectory panel and a noise-scale panel, each with the name its script mounts."""
    small = noise_panel(epochs=4, milestones=[(2,)], gamma=[0.5], lr=[0.1], batch=[32, 64])
    return [(trajectory_panel("loss", steps=8, lr_rule=["linear", "sqrt"]), "trajectory"), (small, "noise")]


def test_both_panels_share_one_javascript_kit():
    for panel, name in both_panels():
        scripts = re.findall(r"<script>(.*?)</script>", panel.to_html(), re.S)
        assert len(scripts) == 1
        script = scripts[0]
        assert script.startswith(KIT_JS.strip()) and script.count("window.labkitKit = {") == 1
        assert f"window.labkitKit.panels.{name} = function (root, data, ui) {{" in script
        assert re.search(rf'window\.labkitKit\.mount\("labkit-panel-[0-9a-f]+", "{name}"\);$', script)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_panel_scripts_parse(tmp_path):
    for panel, name in both_panels():
        path = tmp_path / f"{name}.js"
        path.write_text(re.search(r"<script>(.*?)</script>", panel.to_html(), re.S).group(1))
        result = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_mimebundle_outside_a_kernel_is_static_html():
    bundle = trajectory_panel("linear", steps=5)._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert bundle["text/plain"].startswith("TrajectoryPanel('linear'")


def test_live_widget_builds_and_follows_its_controls(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    panel = trajectory_panel("loss", steps=15, lr_rule=["linear", "sqrt"])
    box = panel.widget()
    controls = {w.description: w for w in box.children[1].children}
    assert {"Δ mode", "a", "α", "K (window)", "LR rule"} <= set(controls)
    controls["Δ mode"].value = "variance"
    assert controls["K (window)"].disabled is False and controls["α"].disabled is True
    final = panel.trajectory(delta="variance")[-1]
    assert f"→ {final} ·" in box.children[-1].value
    controls["change"].value = "linear"  # a's options follow change
    assert [v for _, v in controls["a"].options] == [8, 16, 32, 64]


# -- arguments -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call, error, message", [
    (lambda: trajectory_panel("lienar"), ValueError, "unknown strategy 'lienar'"),
    (lambda: trajectory_panel("loss", beta=[1, 2]), TypeError, "unexpected parameter 'beta'"),
    (lambda: trajectory_panel("loss", alpha=[]), ValueError, "give at least one value"),
    (lambda: trajectory_panel("loss", alpha=[0.1, "x"]), TypeError, "mixes strings and numbers"),
    (lambda: trajectory_panel("loss", alpha=[0.1, 0.1]), ValueError, "repeats an option"),
    (lambda: trajectory_panel("loss", alpha=[1.5, 2.0]), ValueError, "alpha=1.5 is out of range"),
    (lambda: trajectory_panel("loss", steps=0), ValueError, "steps=0 is out of range"),
    (lambda: trajectory_panel("loss", signals={"entropy": [1.0] * 40}), ValueError, "needs the signal 'loss'"),
    (lambda: trajectory_panel("loss", steps=40, signals={"loss": [1.0] * 10}), ValueError, "lower steps to 10"),
    (lambda: trajectory_panel("loss", signals=[1.0, 2.0]), TypeError, "must be a mapping"),
    (lambda: trajectory_panel("confidence", num_classes=[10, 100]), ValueError, "must be a single value"),
    (lambda: trajectory_panel("loss", initial={"alpha": 0.77}), ValueError, "not one of its options"),
    (lambda: trajectory_panel("loss", initial={"tolerance": 0.1}), ValueError, "not a control of this panel"),
    (lambda: trajectory_panel("loss", max_points=100), ValueError, "more than max_points=100"),
    (lambda: trajectory_panel("linear", lr_rule="cubic"), ValueError, "lr_rule='cubic'"),
    (lambda: trajectory_panel("loss", change=["exponential", "linear"], a={"exponential": [2, 3]}),
     ValueError, "no options for change='linear'"),
    (lambda: trajectory_panel("linear", b_init=[16, 32], min_batch=64), ValueError,
     "no grid point of trajectory_panel('linear') gives a valid strategy; for example: b_init=16 is outside"),
    (lambda: trajectory_panel("linear", b_init=[16, 64], min_batch=[8, 32], initial={"b_init": 16, "min_batch": 32}),
     ValueError, "initial point {'a': 32, 'b_init': 16, 'min_batch': 32, 'max_batch': 1024} is invalid"),
])
def test_bad_arguments_say_what_to_do(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_invalid_grid_points_carry_the_strategy_message():
    panel = trajectory_panel("linear", steps=5, b_init=[16, 32], min_batch=[8, 32])
    with pytest.raises(ValueError, match=r"b_init=16 is outside \[min_batch, max_batch\]"):
        panel.trajectory(b_init=16, min_batch=32)
    assert panel.errors and all("outside" in e for e in panel.errors)
    with pytest.raises(TypeError, match="not a control of this panel"):
        panel.params(tolerance=1)
    with pytest.raises(ValueError, match="not on the panel's grid"):
        panel.trajectory(b_init=48)


# -- helpers ---------------------------------------------------------------------------------------------
def test_trajectory_feeds_reading_k_to_call_k():
    strategy = s.build("gns", b_init=32, a=100.0, alpha=1.0, min_batch=1, max_batch=4096)
    assert trajectory(strategy, 3, {"gns": [100.0, 50.0, 400.0]}) == [32, 100, 50, 400]


def test_synthetic_signals_are_deterministic_and_in_range():
    assert synthetic_loss(30, seed=3) == synthetic_loss(30, seed=3) != synthetic_loss(30, seed=4)
    losses = synthetic_loss(50)
    assert all(v > 0 for v in losses) and losses[0] > 2 * losses[-1]
    for classes in (2, 10, 1000):
        assert all(0 <= h <= math.log(classes) for h in synthetic_entropy(50, num_classes=classes))
    gns = synthetic_gns(40, first=10, last=1000, noise=0.0)
    assert gns[0] == pytest.approx(10) and gns[-1] == pytest.approx(1000)
    assert default_signals("linear", 5) == {} and set(default_signals("confidence", 5)) == {"entropy"}
