"""Strategies: formulas against independent numpy computations, bounds, state, errors."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labkit.strategies as S
from labkit.signals import LossEMA, window_variance


def np_bounded(values, lo, hi, multiple=1):
    """round-half-up(clip(v)) to a multiple, computed independently with numpy."""
    v = np.clip(np.asarray(values, dtype=float), lo, hi)
    return (np.floor(v / multiple + 0.5) * multiple).astype(int)


def run(strategy, n, **signals):
    return [strategy.step(**signals) for _ in range(n)]


# -- schedules: formula vs numpy, closed form vs recursion ----------------------------------------------

def test_linear_matches_numpy_and_issue_example():
    s = S.build("linear", b_init=32, a=16, min_batch=16, max_batch=128)
    assert s.batch_size == 32
    k = np.arange(1, 13)
    assert run(s, 12) == list(np_bounded(32 + 16 * k, 16, 128))
    assert s.batch_size == 128


def test_linear_negative_slope_stops_at_min():
    s = S.Linear(b_init=100, a=-7.5, min_batch=10, max_batch=200)
    k = np.arange(1, 20)
    assert run(s, 19) == list(np_bounded(100 - 7.5 * k, 10, 200))


def test_exponential_matches_numpy_with_rounding_to_multiple():
    s = S.Exponential(b_init=24, a=1.3, min_batch=8, max_batch=1024, multiple_of=8)
    k = np.arange(1, 30)
    assert run(s, 29) == list(np_bounded(24 * 1.3 ** k, 8, 1024, 8))


def test_exponential_decay_and_huge_k():
    s = S.Exponential(b_init=512, a=0.5, min_batch=16, max_batch=512)
    assert run(s, 6) == [256, 128, 64, 32, 16, 16]
    assert S.Exponential(b_init=32, a=3.0, max_batch=1024).batch_size_at(10_000) == 1024


@pytest.mark.parametrize("mode", ["triangular", "cosine", "sawtooth"])
def test_cyclical_matches_numpy(mode):
    s = S.Cyclical(b_init=16, period=8, mode=mode, min_batch=16, max_batch=256)
    k = np.arange(1, 25)
    u = (k % 8) / 8
    frac = {"triangular": 1 - np.abs(2 * u - 1), "cosine": (1 - np.cos(2 * np.pi * u)) / 2,
            "sawtooth": (k % 8) / 7}[mode]
    assert run(s, 24) == list(np_bounded(16 + 240 * frac, 16, 256))


def test_cyclical_restarts_each_period():
    s = S.Cyclical(b_init=32, period=4, mode="sawtooth", min_batch=32, max_batch=128)
    traj = run(s, 8)
    assert traj[:4] == traj[4:] and traj[3] == 32 and traj[2] == 128


@pytest.mark.parametrize("change", ["linear", "exponential"])
def test_progressive_reaches_target_after_warmup(change):
    s = S.Progressive(b_init=32, target=512, warmup=4, change=change, max_batch=1024)
    traj = run(s, 6)
    t = np.minimum(np.arange(1, 7) / 4, 1)
    expected = 32 + 480 * t if change == "linear" else 32 * 16.0 ** t
    assert traj == list(np_bounded(expected, 8, 1024))
    assert traj[3:] == [512, 512, 512]


def test_epoch_milestones_and_explicit_epoch():
    s = S.build("epoch", b_init=32, milestones={2: 64, 5: 256}, max_batch=512)
    assert run(s, 6) == [32, 64, 64, 64, 256, 256]
    assert s.step(epoch=1) == 32      # jumping back to an earlier epoch follows the table


def test_one_milestone_syntax_for_the_cli_and_run_specs():
    from labkit.arguments import build_parser
    from labkit.cli import _strategy_params
    from labkit.experiments import parse_run
    from labkit.strategies.schedules import parse_milestones

    assert parse_milestones("5>128;10>256") == {5: 128, 10: 256} == parse_milestones("10>256;5>128;")
    assert parse_run("epoch:milestones=5>128;10>256")[2]["milestones"] == {5: 128, 10: 256}
    args = build_parser().parse_args(["train", "--out", "x", "--strategy", "epoch", "--milestones", "5>128;10>256"])
    assert _strategy_params(args)["milestones"] == {5: 128, 10: 256}


@pytest.mark.parametrize("name,params", [
    ("fixed", {}), ("linear", {"a": 24}), ("exponential", {"a": 1.5}),
    ("cyclical", {"period": 5, "mode": "cosine"}), ("progressive", {"warmup": 7, "change": "exponential"}),
    ("epoch", {"milestones": {3: 100, 9: 400}}),
])
def test_closed_form_equals_step_by_step(name, params):
    s = S.build(name, b_init=40, min_batch=8, max_batch=600, **params)
    closed = [s.batch_size_at(k) for k in range(0, 21)]
    assert [s.batch_size] + run(s, 20) == closed


# -- adaptive strategies ---------------------------------------------------------------------------------

def test_loss_diff_linear_grows_on_fall_and_shrinks_on_rise():
    s = S.LossBased(b_init=64, a=16, change="linear", delta="diff", tolerance=0.0, min_batch=16, max_batch=256)
    losses = [2.0, 1.5, 1.2, 1.3, 1.0]
    traj = [s.step(loss=l) for l in losses]
    assert traj == [64, 80, 96, 80, 96]       # hold (no previous), fall, fall, rise, fall
    assert [d.reason.split(":")[0] for d in s.history] == ["hold", "grow", "grow", "shrink", "grow"]


def test_loss_diff_tolerance_holds_small_changes():
    s = S.LossBased(b_init=64, a=2, delta="diff", tolerance=0.05, max_batch=1024)
    traj = [s.step(loss=l) for l in [1.0, 0.97, 1.02, 0.90]]   # -3 %, +5.2 %, -11.8 %
    assert traj == [64, 64, 32, 64]


def test_loss_ema_matches_hand_computation():
    alpha, losses = 0.3, [2.0, 1.0, 1.6, 1.55, 0.7, 0.9]
    s = S.LossBased(b_init=64, a=2, change="exponential", delta="ema", alpha=alpha, tolerance=0.0,
                    min_batch=8, max_batch=1024)
    traj = [s.step(loss=l) for l in losses]
    m, b, expected = losses[0], 64.0, [64]
    for l in losses[1:]:
        m_new = alpha * l + (1 - alpha) * m
        b = min(max(b * 2 if m_new < m else b / 2, 8), 1024)
        m = m_new
        expected.append(int(b))
    assert traj == expected


def test_loss_variance_grows_when_settled_and_shrinks_when_noisy():
    s = S.LossBased(b_init=64, a=2, delta="variance", window=3, tolerance=0.05, max_batch=1024)
    settled = [1.00, 1.01, 0.99, 1.00]
    assert [s.step(loss=l) for l in settled] == [64, 64, 128, 256]
    assert s.step(loss=2.0) == 128      # [0.99, 1.0, 2.0]: rose over the window
    assert s.step(loss=1.0) == 64       # [1.0, 2.0, 1.0]: flat end to end, cv ≈ 0.35 → fluctuates
    assert [d.reason.split(":")[0] for d in s.history[2:]] == ["grow", "grow", "shrink", "shrink"]


def test_loss_variance_reads_a_steady_fall_as_a_fall():
    """A falling loss has a large variance; the window's direction must win over it."""
    s = S.LossBased(b_init=64, a=2, delta="variance", window=3, tolerance=0.05, max_batch=1024)
    traj = [s.step(loss=l) for l in [0.8, 0.4, 0.2, 0.1, 0.05]]
    assert traj == [64, 64, 128, 256, 512]
    assert "fell" in s.history[-1].reason


def test_window_variance_is_numpy_population_variance():
    values = [0.3, 1.7, 0.9, 2.2, 1.1]
    assert window_variance(values) == pytest.approx(np.var(values))


def test_ema_tracker_closed_form():
    """m_n = (1−α)^n·x_0 + Σ_{j=1..n} α(1−α)^{n−j} x_j, checked against the recursion."""
    alpha, x = 0.25, np.random.default_rng(0).normal(size=12)
    tracker = LossEMA(alpha)
    for value in x:
        tracker.update(float(value))
    n = len(x) - 1
    closed = (1 - alpha) ** n * x[0] + sum(alpha * (1 - alpha) ** (n - j) * x[j] for j in range(1, n + 1))
    assert tracker.average == pytest.approx(closed)


def test_confidence_thresholds_on_normalised_entropy():
    c = 10
    s = S.ConfidenceBased(b_init=64, num_classes=c, low=0.2, high=0.6, a=2, max_batch=1024)
    h = math.log(c)
    assert s.step(entropy=0.1 * h) == 128     # confident
    assert s.step(entropy=0.4 * h) == 128     # in between
    assert s.step(entropy=0.9 * h) == 64      # uncertain
    with pytest.raises(ValueError, match=r"entropy=3.*\[0, log C\]"):
        s.step(entropy=3.0)


def test_gns_moves_toward_smoothed_b_simple_with_capped_factor():
    s = S.GNSBased(b_init=32, alpha=0.5, a=2, min_batch=8, max_batch=4096)
    out = [s.step(gns=g) for g in [1000.0, 1000.0, 1000.0, 1000.0, 1000.0, 1000.0]]
    assert out == [64, 128, 256, 512, 1000, 1000]
    s.step(gns=200.0)                          # smoothed → 600, within ×2 of 1000
    assert s.batch_size == 600
    assert s.step(gns=-5.0) == 600 and "ignored" in s.history[-1].reason


# -- properties: bounds under random signals, state round-trips ------------------------------------------

ALL = [
    ("fixed", {}), ("linear", {"a": 37}), ("exponential", {"a": 1.7}), ("cyclical", {"period": 6}),
    ("loss", {"delta": "diff"}), ("loss", {"delta": "ema", "change": "linear", "a": 40}),
    ("loss", {"delta": "variance", "window": 4}), ("confidence", {"num_classes": 10}),
    ("gns", {"alpha": 0.4}), ("progressive", {"warmup": 5}), ("epoch", {"milestones": {2: 64, 4: 200}}),
]

signal_seq = st.lists(
    st.tuples(st.floats(0.01, 10.0), st.floats(0.0, math.log(10)), st.floats(-50.0, 5000.0)),
    min_size=1, max_size=40,
)


@pytest.mark.parametrize("name,params", ALL)
@given(seq=signal_seq, multiple=st.sampled_from([1, 8]))
@settings(max_examples=40, deadline=None)
def test_every_strategy_stays_within_bounds(name, params, seq, multiple):
    s = S.build(name, b_init=64, min_batch=16, max_batch=512, multiple_of=multiple, **params)
    for loss, entropy, gns in seq:
        b = s.step(loss=loss, entropy=entropy, gns=gns)
        assert 16 <= b <= 512 and b % multiple == 0 and b == s.batch_size
    assert len(s.history) == len(seq) == s.steps


@pytest.mark.parametrize("name,params", ALL)
def test_state_dict_round_trip_continues_identically(name, params):
    rng = np.random.default_rng(1)
    signals = [dict(loss=float(l), entropy=float(e), gns=float(g))
               for l, e, g in zip(rng.uniform(0.5, 2, 30), rng.uniform(0, 2.3, 30), rng.uniform(10, 900, 30))]
    a = S.build(name, b_init=64, min_batch=16, max_batch=512, **params)
    for sig in signals[:12]:
        a.step(**sig)
    state = json.loads(json.dumps(a.state_dict()))       # must survive JSON too
    b = S.build(name, b_init=64, min_batch=16, max_batch=512, **params)
    b.load_state_dict(state)
    assert b.batch_size == a.batch_size and b.history == a.history
    rest_a = [a.step(**sig) for sig in signals[12:]]
    rest_b = [b.step(**sig) for sig in signals[12:]]
    assert rest_a == rest_b and a.history == b.history


def test_state_dict_is_a_copy():
    s = S.LossBased(b_init=64, delta="variance", window=3)
    state = s.state_dict()
    s.step(loss=1.0)
    assert state["tracker"]["values"] == [] and state["steps"] == 0


# -- errors ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params,error,words", [
    ("linear", {"min_batch": 256, "max_batch": 128}, ValueError, "min_batch=256 is greater than max_batch=128"),
    ("linear", {"b_init": 8, "min_batch": 16}, ValueError, "b_init=8 is outside"),
    ("linear", {"min_batch": 0}, ValueError, "min_batch=0"),
    ("linear", {"b_init": 32.5}, TypeError, "b_init=32.5 must be an integer"),
    ("linear", {"max_batch": 100, "multiple_of": 8}, ValueError, "max_batch=100 is not a multiple of multiple_of=8: use 96 or 104"),
    ("linear", {"a": float("nan")}, ValueError, "a=nan is not finite"),
    ("exponential", {"a": 0}, ValueError, "a=0 is out of range"),
    ("exponential", {"a": -2}, ValueError, "a=-2 is out of range"),
    ("loss", {"a": 0, "change": "linear"}, ValueError, "a=0 is out of range: expected a number > 0"),
    ("loss", {"a": 1.0, "change": "exponential"}, ValueError, "a=1 is out of range: expected a number > 1"),
    ("loss", {"alpha": 0.0, "delta": "ema"}, ValueError, r"alpha=0 is out of range: expected a number in \(0, 1\]"),
    ("loss", {"alpha": 1.5}, ValueError, "alpha=1.5"),
    ("loss", {"window": 1, "delta": "variance"}, ValueError, "window=1 is out of range"),
    ("loss", {"delta": "median"}, ValueError, "delta='median' is not allowed: expected one of 'diff', 'ema', 'variance'"),
    ("loss", {"change": "quadratic"}, ValueError, "change='quadratic' is not allowed"),
    ("cyclical", {"period": 1}, ValueError, "period=1"),
    ("cyclical", {"mode": "square"}, ValueError, "mode='square'"),
    ("confidence", {"low": 0.8, "high": 0.2}, ValueError, "low=0.8 is greater than high=0.2"),
    ("gns", {"a": 0.5}, ValueError, "a=0.5 is out of range"),
    ("epoch", {"milestones": {3: 4096}}, ValueError, r"milestones\[3\]=4096 is out of range"),
    ("linear", {"alpha": 0.3}, TypeError, "strategy 'linear' takes no parameter 'alpha'"),
])
def test_bad_parameters_name_the_value(name, params, error, words):
    with pytest.raises(error, match=words):
        S.build(name, **params)


def test_unknown_name_lists_the_allowed():
    with pytest.raises(ValueError, match="unknown strategy 'adam': expected one of fixed, linear, exponential"):
        S.build("adam")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_signal_is_refused(bad):
    s = S.build("loss")
    with pytest.raises(ValueError, match="signal loss=.* is not finite"):
        s.step(loss=bad)
    assert s.steps == 0 and s.history == []         # nothing was recorded


def test_missing_required_signal_says_how_to_pass_it():
    with pytest.raises(TypeError, match=r"GNSBased.step\(\) needs the signal\(s\) gns: call step\(gns=...\)"):
        S.build("gns").step(loss=1.0)


def test_unused_signals_are_ignored_even_if_bad():
    assert S.build("linear", a=8).step(loss=float("nan"), whatever="x") == 40


# -- LR coupling --------------------------------------------------------------------------------------------

def test_scaled_lr_rules():
    assert S.scaled_lr(0.1, 128, 512, "linear") == pytest.approx(0.4)
    assert S.scaled_lr(0.1, 128, 512, "sqrt") == pytest.approx(0.2)
    assert S.scaled_lr(0.1, 128, 512, "none") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="rule='cubic' is not allowed"):
        S.scaled_lr(0.1, 128, 512, "cubic")
    with pytest.raises(ValueError, match="base_lr=-1"):
        S.scaled_lr(-1, 128, 512)


@pytest.mark.parametrize("classes, eps", [(10, 0.1), (10, 0.3), (2, 0.05), (100, 0.1), (1000, 0.2)])
def test_smoothed_target_entropy_against_numpy_and_torch_cross_entropy(classes, eps):
    import torch
    import torch.nn.functional as F

    from labkit.signals import smoothed_target_entropy
    target = np.full(classes, eps / classes)
    target[-1] += 1 - eps
    by_hand = -(target * np.log(target)).sum()
    assert smoothed_target_entropy(classes, eps) == pytest.approx(by_hand, rel=1e-12)
    # cross-entropy with label smoothing, at the prediction equal to the smoothed target, is its entropy
    logits = torch.tensor(np.log(target), dtype=torch.float64)[None]
    ce = F.cross_entropy(logits, torch.tensor([classes - 1]), label_smoothing=eps).item()
    assert smoothed_target_entropy(classes, eps) == pytest.approx(ce, rel=1e-9)


def test_smoothed_target_entropy_ends_and_bad_input():
    from labkit.signals import max_entropy, smoothed_target_entropy
    assert smoothed_target_entropy(10, 0.0) == 0.0 and math.copysign(1, smoothed_target_entropy(10, 0.0)) == 1
    assert smoothed_target_entropy(10, 1.0) == pytest.approx(max_entropy(10), rel=1e-12)
    assert smoothed_target_entropy(10, 0.1) / max_entropy(10) == pytest.approx(0.2173, abs=1e-4)
    with pytest.raises(ValueError, match="smoothing"):
        smoothed_target_entropy(10, 1.5)
