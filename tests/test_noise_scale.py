"""SGD's noise scale and the grow-batch / decay-LR pair: hand computations, numpy, the panel's grid."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from labkit.lr_schedules import PAIR_RUNS, noise_scale, step_pair, with_noise_scale
from labkit.widgets import NoisePanel, noise_panel
from labkit.widgets.noise import SERIES, pair_readout

RUN = dict(epochs=12, milestones=(6, 9), gamma=0.1, lr=0.05, batch=128, n=60_000, momentum=0.9)


def np_pair(epochs, milestones, gamma, lr, batch, n, momentum=0.0):
    """The pair written again with numpy: {run: (lr, batch, g, g_exact, steps)} per epoch 1 … epochs."""
    e = np.arange(1, epochs + 1)
    k = (np.asarray(milestones)[None, :] < e[:, None]).sum(axis=1) if len(milestones) else np.zeros_like(e)
    runs = {"decay LR": (lr * gamma ** k, np.full(epochs, batch)),
            "grow batch": (np.full(epochs, lr), np.round(batch / gamma ** k).astype(int))}
    return {run: (lrs, b, lrs * n / b / (1 - momentum), lrs * (n / b - 1) / (1 - momentum), n // b)
            for run, (lrs, b) in runs.items()}


# -- noise_scale -----------------------------------------------------------------------------------------
def test_noise_scale_by_hand():
    assert noise_scale(0.1, 50_000, 128) == pytest.approx(0.1 * (50_000 / 128 - 1))          # 38.9625
    assert noise_scale(0.1, 50_000, 128) == pytest.approx(38.9625)
    assert noise_scale(0.1, 50_000, 128, exact=False) == pytest.approx(0.1 * 50_000 / 128)   # 39.0625
    assert noise_scale(0.05, 60_000, 128, 0.9) == pytest.approx(0.05 * 467.75 / 0.1)         # 233.875
    assert noise_scale(0.05, 60_000, 128, 0.9, exact=False) == pytest.approx(234.375)
    assert noise_scale(1.0, 100, 100) == 0.0                                                 # full batch: no noise
    # the two forms differ by lr/(1 − m), whatever the batch
    for b in (1, 10, 64, 999):
        gap = noise_scale(0.3, 1000, b, 0.5, exact=False) - noise_scale(0.3, 1000, b, 0.5)
        assert gap == pytest.approx(0.3 / 0.5)


def test_decaying_lr_and_growing_batch_lower_g_alike_for_small_batches():
    for factor in (2, 5, 10):
        decayed = noise_scale(0.1 / factor, 1_000_000, 32, exact=False)
        grown = noise_scale(0.1, 1_000_000, 32 * factor, exact=False)
        assert decayed == pytest.approx(grown, rel=1e-12)
        assert noise_scale(0.1 / factor, 1_000_000, 32) == pytest.approx(noise_scale(0.1, 1_000_000, 32 * factor),
                                                                          rel=1e-3)


@pytest.mark.parametrize("args, error, message", [
    ((0.0, 100, 10), ValueError, "lr=0 is out of range"),
    ((0.1, 100, 101), ValueError, "batch=101 is out of range: expected an integer in [1, 100]"),
    ((0.1, 100, 0), ValueError, "batch=0 is out of range"),
    ((0.1, 100, 10.5), TypeError, "batch=10.5 must be an integer"),
    ((0.1, True, 1), TypeError, "n=True must be an integer"),
    ((0.1, 100, 10, 1.0), ValueError, "momentum=1 is out of range: expected a number in [0, 1)"),
    ((float("nan"), 100, 10), ValueError, "lr=nan is not finite"),
])
def test_noise_scale_refuses_bad_values(args, error, message):
    with pytest.raises(error, match=re.escape(message)):
        noise_scale(*args)


# -- step_pair -------------------------------------------------------------------------------------------
def test_step_pair_by_hand():
    t = step_pair(**RUN)
    assert list(t.columns) == ["epoch", "run", "lr", "batch", "g", "g_exact", "steps", "cum_steps"]
    decay, grow = (t[t.run == run].reset_index(drop=True) for run in PAIR_RUNS)
    assert list(decay.epoch) == list(grow.epoch) == list(range(1, 13))
    assert decay.lr.tolist() == pytest.approx([0.05] * 6 + [0.005] * 3 + [0.0005] * 3)
    assert decay.batch.tolist() == [128] * 12
    assert grow.lr.tolist() == [0.05] * 12
    assert grow.batch.tolist() == [128] * 6 + [1280] * 3 + [12800] * 3
    assert decay.steps.tolist() == [468] * 12                              # ⌊60000/128⌋
    assert grow.steps.tolist() == [468] * 6 + [46] * 3 + [4] * 3           # ⌊60000/1280⌋, ⌊60000/12800⌋
    assert decay.cum_steps.iloc[-1] == 12 * 468 == 5616
    assert grow.cum_steps.iloc[-1] == 6 * 468 + 3 * 46 + 3 * 4 == 2958
    assert decay.g.tolist() == pytest.approx([234.375] * 6 + [23.4375] * 3 + [2.34375] * 3)
    # the same g at every epoch, and the grow-batch run takes fewer updates
    assert grow.g.tolist() == pytest.approx(decay.g.tolist(), rel=1e-12)
    assert (grow.cum_steps <= decay.cum_steps).all() and grow.cum_steps.iloc[-1] < decay.cum_steps.iloc[-1]
    # the exact g of the grown batch is lower by lr·(1 − γ^k)/(1 − m): 12800 is not ≪ 60000
    k = np.array([0] * 6 + [1] * 3 + [2] * 3)
    assert (decay.g_exact - grow.g_exact).tolist() == pytest.approx(list(0.05 * (1 - 0.1 ** k) / 0.1))
    assert grow.g_exact.iloc[-1] == pytest.approx(0.05 * (60_000 / 12_800 - 1) / 0.1)      # 1.84375


@pytest.mark.parametrize("epochs, milestones, gamma, lr, batch, n, momentum", [
    (12, (6, 9), 0.1, 0.05, 128, 60_000, 0.9),
    (10, (3,), 0.5, 0.1, 32, 2048, 0.0),
    (20, (5, 10, 15), 0.5, 0.2, 16, 50_000, 0.9),
    (8, (), 0.2, 0.01, 64, 1000, 0.5),
    (30, (10, 20), 0.2, 0.4, 100, 100_000, 0.0),
    (6, (1, 2, 3, 4, 5), 0.5, 1.0, 1, 64, 0.0),
])
def test_step_pair_matches_numpy(epochs, milestones, gamma, lr, batch, n, momentum):
    t = step_pair(epochs, milestones, gamma, lr, batch, n, momentum)
    for run, (lrs, b, g, g_exact, steps) in np_pair(epochs, milestones, gamma, lr, batch, n, momentum).items():
        frame = t[t.run == run]
        np.testing.assert_allclose(frame.lr, lrs, rtol=1e-12)
        np.testing.assert_array_equal(frame.batch, b)
        np.testing.assert_allclose(frame.g, g, rtol=1e-12)
        np.testing.assert_allclose(frame.g_exact, g_exact, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(frame.steps, steps)
        np.testing.assert_array_equal(frame.cum_steps, np.cumsum(steps))
    decay, grow = (t[t.run == run] for run in PAIR_RUNS)
    np.testing.assert_allclose(grow.g, decay.g, rtol=1e-12)                # 1/γ an integer: the same g
    assert grow.cum_steps.iloc[-1] <= decay.cum_steps.iloc[-1]
    if milestones:
        assert grow.cum_steps.iloc[-1] < decay.cum_steps.iloc[-1]


def test_step_pair_rounds_the_grown_batch():
    t = step_pair(6, (2, 4), gamma=0.3, lr=0.1, batch=10, n=10_000)        # 10/0.3 = 33.3 → 33, 10/0.09 → 111
    decay, grow = (t[t.run == run].reset_index(drop=True) for run in PAIR_RUNS)
    assert grow.batch.tolist() == [10, 10, 33, 33, 111, 111]
    assert np.all(np.abs(grow.g / decay.g - 1) <= 0.5 / grow.batch)        # equal up to the rounding


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(milestones=(3, 6, 9)), ValueError, "reaches batch 128000 = 128/0.1^3, more than the n=60000"),
    (dict(milestones=(9, 6)), ValueError, "milestones=[9, 6] must be strictly increasing epochs"),
    (dict(milestones=(6, 12)), ValueError, "milestones[1]=12 is out of range: expected an integer in [1, 11]"),
    (dict(milestones=6), TypeError, "milestones=6 must be a sequence of epochs"),
    (dict(milestones="6,9"), TypeError, "milestones='6,9' must be a sequence of epochs"),
    (dict(gamma=0.0), ValueError, "gamma=0 is out of range: expected a number in (0, 1]"),
    (dict(gamma=2.0), ValueError, "gamma=2 is out of range"),
    (dict(batch=70_000), ValueError, "batch=70000 is out of range"),
    (dict(epochs=0), ValueError, "epochs=0 is out of range"),
])
def test_step_pair_refuses_bad_values(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        step_pair(**{**RUN, **kwargs})


def test_with_noise_scale_reads_a_recorded_pair_back():
    """Histories shaped like load_histories' (cumulative ``steps``, mean ``batch_size``) give step_pair's
    columns back."""
    plan = step_pair(**RUN)
    frames = []
    for label, run in zip(("decay-lr", "grow-batch"), PAIR_RUNS):
        for seed in (0, 1):
            p = plan[plan.run == run]
            frames.append(pd.DataFrame(dict(run=label, seed=seed, epoch=p.epoch, batch_size=p.batch.astype(float),
                                            lr=p.lr, steps=p.cum_steps, test_acc=0.9)))
    recorded = with_noise_scale(pd.concat(frames, ignore_index=True).sample(frac=1, random_state=0),
                                n=RUN["n"], momentum=RUN["momentum"])
    for label, run in zip(("decay-lr", "grow-batch"), PAIR_RUNS):
        p = plan[plan.run == run]
        for seed in (0, 1):
            r = recorded[(recorded.run == label) & (recorded.seed == seed)]
            assert r.epoch.tolist() == p.epoch.tolist()
            np.testing.assert_allclose(r.g, p.g, rtol=1e-12)
            np.testing.assert_allclose(r.g_exact, p.g_exact, rtol=1e-12)
            assert r.epoch_steps.tolist() == p.steps.tolist() and r.cum_steps.tolist() == p.cum_steps.tolist()


# -- the panel ---------------------------------------------------------------------------------------------
def embedded_data(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="([^"]+)-data">(.*?)</script>', html, re.S)
    assert match, "the static HTML has no embedded JSON data"
    return json.loads(match.group(2))


def assert_point_is_step_pair(point, table):
    for col in SERIES:
        for values, run in zip(point[col], PAIR_RUNS):
            np.testing.assert_allclose(values, table[table.run == run][col], rtol=1e-9, err_msg=col)


@pytest.mark.parametrize("chosen", [
    {}, dict(milestones=(4, 8), gamma=0.5, lr=0.01, batch=32), dict(milestones=(3, 6, 9), gamma=0.2, batch=256),
    dict(milestones=(8,), gamma=0.1, lr=0.1, batch=64),
])
def test_precomputed_points_equal_step_pair(chosen):
    panel = noise_panel()
    p = {**panel.initial, **chosen}
    table = step_pair(12, p["milestones"], p["gamma"], p["lr"], p["batch"], 60_000, 0.9)
    assert_point_is_step_pair(panel.series(**chosen), table)
    pd.testing.assert_frame_equal(panel.pair(**chosen), table)             # the live path
    # what the JavaScript reads: option index per control, dot strides, points[key]
    data = embedded_data(panel.to_html())
    key = sum(c["values"].index(", ".join(map(str, p[c["name"]])) if c["name"] == "milestones" else p[c["name"]])
              * stride for c, stride in zip(data["controls"], data["strides"]))
    assert_point_is_step_pair(data["points"][key], table)


def test_every_point_of_a_small_grid_is_step_pair_or_its_error():
    panel = noise_panel(epochs=8, n=5000, momentum=0.0, milestones=[(2, 5), (3,), (1, 2, 3)], gamma=[0.5, 0.1],
                        lr=[0.1], batch=[16, 100], initial={"gamma": 0.5})
    data = embedded_data(panel.to_html())
    for i, (m, gamma, batch) in enumerate((m, g, b) for m in [(2, 5), (3,), (1, 2, 3)] for g in (0.5, 0.1)
                                          for b in (16, 100)):
        try:
            table = step_pair(8, m, gamma, 0.1, batch, 5000)
        except ValueError as err:
            assert data["points"][i] == {"error": str(err)}
            with pytest.raises(ValueError, match="more than the n=5000"):
                panel.series(milestones=m, gamma=gamma, batch=batch)
        else:
            assert_point_is_step_pair(data["points"][i], table)


def test_static_html_embeds_the_data_and_no_url():
    panel = noise_panel()
    html = panel.to_html()
    data = embedded_data(html)
    assert data["epochs"] == 12 and data["runs"] == list(PAIR_RUNS) and len(data["points"]) == 4 * 3 * 3 * 4
    assert data["gmin"] <= min(v for p in data["points"] if "g" in p for v in p["g_exact"][1] if v > 0)
    assert 'class="labkit-panel"' in html and 'data-panel="noise-scale"' in html
    assert not re.search(r"https?://|//cdn|\bsrc=", html), "the panel must not load or link anything"
    assert "</script>" not in html.split('-data">', 1)[1].split("</script>", 1)[0]
    assert len(html) < 300_000
    assert html == noise_panel().to_html()                                  # deterministic
    assert noise_panel(n=50_000).to_html() != html


def test_mimebundle_outside_a_kernel_is_static_html():
    bundle = noise_panel()._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert bundle["text/plain"].startswith("NoisePanel(epochs=12, n=60000")


def test_readout_says_updates_and_g():
    line = pair_readout(step_pair(**RUN))
    assert line == ("updates: decay LR 5616, grow batch 2958 (1.90× fewer) · final batch 12800 · last epoch g "
                    "2.34 (both); exact 2.34 vs 1.84")


def test_live_widget_builds_and_follows_its_controls(monkeypatch):
    pytest.importorskip("ipywidgets")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    panel = noise_panel()
    box = panel.widget()
    controls = {w.description: w for w in box.children[1].children}
    assert set(controls) == {"milestones (epochs)", "γ", "starting lr", "starting B"}
    assert "2958" in box.children[-1].value
    controls["γ"].value = 0.5
    assert box.children[-1].value.startswith("updates: decay LR 5616, grow batch 3861")   # 6·468 + 3·234 + 3·117
    controls["milestones (epochs)"].value = (3, 6, 9)
    controls["γ"].value = 0.1
    assert "more than the n=60000" in box.children[-1].value


@pytest.mark.parametrize("call, error, message", [
    (lambda: noise_panel(gamma=[]), ValueError, "give at least one option"),
    (lambda: noise_panel(lr=[0.1, 0.1]), ValueError, "repeats an option"),
    (lambda: noise_panel(epochs=1), ValueError, "epochs=1 is out of range"),
    (lambda: noise_panel(initial={"gamma": 0.3}), ValueError, "initial gamma=0.3 is not on the grid"),
    (lambda: noise_panel(milestones=[(3, 6, 9)], batch=[256]), ValueError, "initial point"),
    (lambda: noise_panel().series(beta=1), TypeError, "'beta' is not a control of this panel"),
    (lambda: noise_panel().series(batch=48), ValueError, "batch=48 is not on the panel's grid"),
])
def test_bad_arguments_say_what_to_do(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_panel_class_is_exported():
    assert isinstance(noise_panel(), NoisePanel)
