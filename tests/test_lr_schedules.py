"""LR schedules over samples seen: closed forms vs numpy, torch's schedulers, changing batches, state, errors."""
import json
import math

import numpy as np
import pytest
import torch

from labkit.lr_schedules import LR_SCHEDULES, LRSchedule, lr_factor

P = np.linspace(-0.1, 1.1, 1201)  # includes p outside [0, 1], which must be clamped


def np_factor(name, p, w=0.0, milestones=(0.5, 0.75), gamma=0.1, final=0.0, div=25.0, final_div=1e4):
    """The schedules written again, independently, with numpy."""
    p = np.clip(np.atleast_1d(np.asarray(p, dtype=float)), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (p - w) / (1 - w)
        if name == "onecycle":
            f_min = 1 / (div * final_div)
            rise = 1 / div + (1 - 1 / div) * (1 - np.cos(np.pi * p / w)) / 2
            return np.where(p < w, rise, f_min + (1 - f_min) * (1 + np.cos(np.pi * t)) / 2)
        after = {"constant": np.ones_like(p),
                 "cosine": final + (1 - final) * (1 + np.cos(np.pi * t)) / 2,
                 "linear": final + (1 - final) * (1 - t),
                 "step": gamma ** (p[:, None] >= np.asarray(milestones)[None, :]).sum(axis=1)}[name]
        return np.where(p < w, p / w, after)


def ours(name, p, *args, **kwargs):
    return np.array([lr_factor(name, float(x), *args, **kwargs) for x in p])


# -- closed forms ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["constant", "cosine", "linear", "step"])
@pytest.mark.parametrize("w", [0.0, 0.05, 0.3])
@pytest.mark.parametrize("final", [0.0, 0.2])
def test_schedules_match_numpy(name, w, final):
    kw = dict(milestones=(0.4, 0.7, 0.9), gamma=0.3, final=final)
    expected = np_factor(name, P, w, **kw)
    np.testing.assert_allclose(ours(name, P, w, **kw), expected, rtol=1e-12, atol=1e-15)
    s = LRSchedule(name, total_samples=1000, warmup=w, **kw)
    np.testing.assert_allclose([s.factor_at(x) for x in P], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("w", [0.01, 0.3, 0.6])
@pytest.mark.parametrize("div, final_div", [(25.0, 1e4), (10.0, 100.0), (1.0, 1.0)])
def test_onecycle_matches_numpy(w, div, final_div):
    np.testing.assert_allclose(ours("onecycle", P, w, div=div, final_div=final_div),
                               np_factor("onecycle", P, w, div=div, final_div=final_div), rtol=1e-12)


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("w, final", [(0.0, 0.0), (0.1, 0.05), (0.25, 0.5)])
def test_decays_start_at_peak_and_reach_final(name, w, final):
    assert lr_factor(name, 0.0, w, final=final) == (1.0 if w == 0 else 0.0)
    assert lr_factor(name, w / 2, w, final=final) == pytest.approx(0.5 if w else 1.0)
    assert lr_factor(name, w, w, final=final) == pytest.approx(1.0)
    assert lr_factor(name, 1.0, w, final=final) == pytest.approx(final, abs=1e-15)
    assert lr_factor(name, 7.0, w, final=final) == pytest.approx(final, abs=1e-15)  # clamped


def test_constant_is_one_after_warmup():
    assert {lr_factor("constant", x) for x in P} == {1.0}
    assert lr_factor("constant", 0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor("constant", 0.1, 0.1) == 1.0


def test_step_values_just_before_and_after_milestones():
    kw = dict(milestones=(0.3, 0.6, 0.9), gamma=0.5)
    eps = 1e-9
    assert [lr_factor("step", m - eps, **kw) for m in (0.3, 0.6, 0.9)] == [1.0, 0.5, 0.25]
    assert [lr_factor("step", m, **kw) for m in (0.3, 0.6, 0.9)] == [0.5, 0.25, 0.125]
    assert lr_factor("step", 1.0, **kw) == 0.125
    assert lr_factor("step", 0.0, **kw) == 1.0
    assert lr_factor("step", 0.05, 0.1, **kw) == pytest.approx(0.5)  # warm-up ramp before w


def test_onecycle_endpoints():
    assert lr_factor("onecycle", 0.0, 0.3) == pytest.approx(1 / 25)
    assert lr_factor("onecycle", 0.3, 0.3) == pytest.approx(1.0)
    assert lr_factor("onecycle", 1.0, 0.3) == pytest.approx(1 / 25e4)


# -- against torch's schedulers -------------------------------------------------------------------------

def torch_lrs(make_scheduler, steps, peak=0.4):
    """The lr torch's scheduler gives at steps 0 .. steps-1."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak, momentum=0.9)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for i in range(steps):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        if i < steps - 1:
            scheduler.step()
    return np.array(lrs)


@pytest.mark.parametrize("total_steps, pct_start", [(100, 0.3), (1000, 0.25), (37, 0.5), (11, 0.45)])
@pytest.mark.parametrize("div, final_div", [(25.0, 1e4), (8.0, 50.0)])
def test_onecycle_matches_torch(total_steps, pct_start, div, final_div):
    """Torch anneals phase 1 over steps [0, pct_start·T − 1] and phase 2 over [pct_start·T − 1, T − 1]. With
    p = i/(T − 1) both phases map onto ours exactly when w = (pct_start·T − 1)/(T − 1); the only difference
    left is rounding, hence rtol 1e-12."""
    peak = 0.4
    lrs = torch_lrs(lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=peak, total_steps=total_steps, pct_start=pct_start, anneal_strategy="cos",
        three_phase=False, div_factor=div, final_div_factor=final_div), total_steps, peak)
    w = (float(pct_start * total_steps) - 1) / (total_steps - 1)
    p = np.arange(total_steps) / (total_steps - 1)
    np.testing.assert_allclose(lrs, peak * ours("onecycle", p, w, div=div, final_div=final_div), rtol=1e-12)


@pytest.mark.parametrize("total_steps", [2, 50, 333])
@pytest.mark.parametrize("final", [0.0, 0.1])
def test_cosine_matches_torch_cosine_annealing(total_steps, final):
    """CosineAnnealingLR(T_max = T − 1, eta_min = final·peak) at step i is ours at p = i/(T − 1), w = 0. Torch
    updates the lr recursively, so it drifts from the closed form by rounding only: atol 1e-12·peak."""
    peak = 0.4
    lrs = torch_lrs(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=total_steps - 1, eta_min=final * peak), total_steps, peak)
    p = np.arange(total_steps) / (total_steps - 1)
    np.testing.assert_allclose(lrs, peak * ours("cosine", p, final=final), rtol=0, atol=1e-12 * peak)


# -- progress in samples under a changing batch ---------------------------------------------------------

EPOCH = 8192
EPOCHS = 4
SCHEDULE_KW = dict(milestones=(0.5, 0.75), gamma=0.2, final=0.1, div=10.0, final_div=100.0)


def batches(growing):
    """32 per step throughout, or 32, 64, 128, 256 in successive epochs (every size divides EPOCH)."""
    sizes = []
    for epoch in range(EPOCHS):
        b = 32 * 2 ** epoch if growing else 32
        sizes += [b] * (EPOCH // b)
    return sizes


def train(name, w, sizes):
    """Run a schedule over batch sizes: the factor at each seen count, and the LR area Σ f·B / total."""
    s = LRSchedule(name, total_samples=EPOCH * EPOCHS, warmup=w, **SCHEDULE_KW)
    at_seen, area = {}, 0.0
    for b in sizes:
        area += s.factor(b) * b
        s.advance(b)
        at_seen[s.seen] = (s.progress, s.factor_at(s.progress))
    return at_seen, area / s.total_samples


def closed_form_area(name, w, milestones, gamma, final, div, final_div):
    """∫₀¹ f(p) dp, by hand."""
    if name == "onecycle":
        f_min = 1 / (div * final_div)
        return w * (1 / div + (1 - 1 / div) / 2) + (1 - w) * (f_min + (1 - f_min) / 2)
    after = {"constant": 1 - w,
             "linear": (1 - w) * (final + (1 - final) / 2),
             "cosine": (1 - w) * (final + (1 - final) / 2),
             "step": (milestones[0] - w) + gamma * (milestones[1] - milestones[0]) + gamma ** 2 * (1 - milestones[1])}
    return w / 2 + after[name]


@pytest.mark.parametrize("name", LR_SCHEDULES)
@pytest.mark.parametrize("w", [0.1, 0.3])
def test_growing_batch_follows_the_same_schedule_in_samples(name, w):
    fixed, area_fixed = train(name, w, batches(growing=False))
    grown, area_grown = train(name, w, batches(growing=True))
    assert len(batches(growing=True)) < len(batches(growing=False)) / 2  # far fewer steps for the same data
    common = sorted(set(fixed) & set(grown))
    assert len(common) > 300 and common[-1] == EPOCH * EPOCHS
    assert [grown[seen] for seen in common] == [fixed[seen] for seen in common]
    np.testing.assert_allclose([grown[seen][1] for seen in common],
                               np_factor(name, np.array(common) / (EPOCH * EPOCHS), w, **SCHEDULE_KW), rtol=1e-12)
    # A midpoint sum over batches of width h <= 256/32768 is off by <= h²·max|f''|/24 per unit of p on smooth
    # parts (< 6e-6 here) plus <= h²·(jump in slope)/8 at the warm-up kink, where h = 32/32768 (< 2e-6). The
    # step milestones fall on batch boundaries. Measured: <= 4.5e-6.
    expected = closed_form_area(name, w, **SCHEDULE_KW)
    assert area_fixed == pytest.approx(expected, abs=1e-5)
    assert area_grown == pytest.approx(expected, abs=1e-5)


def test_a_schedule_in_steps_would_not_follow_the_data():
    """The contrast that motivates samples: linear decay over steps, with a growing batch, spends most steps
    (and so most of the LR decay) on the first half of the data."""
    sizes = batches(growing=True)
    steps = len(sizes)
    per_step_area = sum(lr_factor("linear", (i + 0.5) / steps) * b for i, b in enumerate(sizes)) / (EPOCH * EPOCHS)
    _, per_sample_area = train("linear", 0.0, sizes)
    assert per_sample_area == pytest.approx(0.1 + 0.9 / 2, abs=1e-5)
    assert abs(per_step_area - 0.5) > 0.1


def test_factor_is_taken_at_the_middle_of_the_batch_and_progress_clamps():
    s = LRSchedule("cosine", total_samples=1000, warmup=0.1, final=0.05)
    s.advance(100)
    assert s.progress == 0.1
    assert s.factor(50) == lr_factor("cosine", 0.125, 0.1, final=0.05)
    s.advance(950)
    assert s.seen == 1050 and s.progress == 1.0
    assert s.factor(64) == pytest.approx(0.05)


# -- state ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LR_SCHEDULES)
def test_state_round_trips_through_json(name):
    s = LRSchedule(name, total_samples=5000, warmup=0.2, milestones=(0.3, 0.8), gamma=0.5, final=0.1, div=5.0)
    for b in (32, 64, 128, 256):
        s.advance(b)
    state = json.loads(json.dumps(s.state_dict()))
    fresh = LRSchedule()
    fresh.load_state_dict(state)
    assert vars(fresh) == vars(s)
    assert fresh.progress == s.progress == 480 / 5000
    assert fresh.factor(512) == s.factor(512)
    fresh.advance(512)
    s.advance(512)
    assert fresh.factor(64) == s.factor(64)


@pytest.mark.parametrize("bad, error, fragment", [
    ({"gamma": 2.0}, ValueError, "gamma=2"),
    ({"seen": -5}, ValueError, "seen=-5"),
    ({"name": "exp"}, ValueError, "'exp'"),
    ({"milestones": [0.8, 0.3]}, ValueError, "[0.8, 0.3]"),
    ({"lr": 0.1}, KeyError, "'lr'"),
])
def test_bad_state_is_refused_and_leaves_the_schedule_unchanged(bad, error, fragment):
    s = LRSchedule("step", total_samples=100)
    s.advance(10)
    before = vars(s).copy()
    with pytest.raises(error) as info:
        s.load_state_dict({**s.state_dict(), **bad})
    assert fragment in str(info.value)
    assert vars(s) == before


# -- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, fragment", [
    ({"name": "cosin"}, "name='cosin'"),
    ({"warmup": 1.0}, "warmup=1"),
    ({"warmup": -0.1}, "warmup=-0.1"),
    ({"milestones": (0.75, 0.5)}, "milestones=[0.75, 0.5]"),
    ({"milestones": (0.5, 0.5)}, "milestones=[0.5, 0.5]"),
    ({"milestones": (0.0, 0.5)}, "milestones[0]=0"),
    ({"milestones": (0.5, 1.0)}, "milestones[1]=1"),
    ({"gamma": 0.0}, "gamma=0"),
    ({"gamma": 1.5}, "gamma=1.5"),
    ({"final": 1.0}, "final=1"),
    ({"final": -0.2}, "final=-0.2"),
    ({"name": "onecycle", "warmup": 0.0}, "warmup=0"),
    ({"div": 0.5}, "div=0.5"),
    ({"final_div": 0.0}, "final_div=0"),
])
def test_bad_parameters_raise_with_the_bad_value(kwargs, fragment):
    kwargs = {"name": "step", **kwargs}
    for call in (lambda: lr_factor(p=0.5, **kwargs), lambda: LRSchedule(total_samples=10, **kwargs)):
        with pytest.raises(ValueError) as info:
            call()
        assert fragment in str(info.value)


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError) as info:
        lr_factor("exponential", 0.5)
    assert all(repr(name) in str(info.value) for name in LR_SCHEDULES)


@pytest.mark.parametrize("call, fragment", [
    (lambda: LRSchedule("linear", total_samples=0), "total_samples=0"),
    (lambda: LRSchedule("linear", total_samples=10).advance(0), "batch=0"),
    (lambda: LRSchedule("linear", total_samples=10).factor(-4), "batch=-4"),
    (lambda: LRSchedule("linear", total_samples=10).factor_at(math.nan), "p=nan"),
    (lambda: lr_factor("linear", math.inf), "p=inf"),
])
def test_bad_counts_and_progress_raise_with_the_bad_value(call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    assert fragment in str(info.value)
