"""labkit.gns against ground truth.

Linear least squares, L = 1/2N Σ (x_nᵀw + c − y_n)², and softmax regression have per-example gradients in
closed form (x_n·r_n and r_n; (p_n − onehot(y_n)) ⊗ x_n and p_n − onehot(y_n)), so over a fixed dataset of
N examples, treated as the population, numpy gives the exact tr(Σ) = 1/N Σ ‖g_n − G‖², ‖G‖² and B_simple.
Batches are drawn from it uniformly with replacement, so the estimators' assumptions hold exactly, and
the torch estimators (nn.Linear models) are checked against those numbers.
"""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.gns import (GNSEstimate, GNSTracker, TwoBatchGNS, flat_grad, lab_gns, microbatch_estimate,
                        microbatch_grads, microbatch_norms, per_example_estimate, per_example_grads,
                        two_batch_estimate)
from labkit.strategies import GNSBased

N = 2000          # examples in each dataset (the population)
BATCH, K = 256, 8  # a drawn batch and its microbatches (b = 32)
DRAWS = 200        # batches per statistical check


pytestmark = pytest.mark.usefixtures("one_thread")


def half_mse(output, target):
    return 0.5 * (output.squeeze(-1) - target).square().mean()


class Problem:
    """A dataset, a model at fixed weights, and the exact per-example gradients (numpy, float64)."""

    def __init__(self, model, loss_fn, x, y, per_example):
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.g = per_example                                   # (N, P), torch's parameter order
        self.G = per_example.mean(0)
        self.trace_sigma = ((per_example - self.G) ** 2).sum(1).mean()
        self.grad_sq = self.G @ self.G
        self.b_simple = self.trace_sigma / self.grad_sq

    def draw(self, gen, size=BATCH):
        idx = torch.randint(0, N, (size,), generator=gen)
        return self.x[idx], self.y[idx]


def least_squares(sigma, d=10, seed=0, at_optimum=False):
    """y = Xw* + σ·noise; the model sits at w* + a unit step (or at the dataset's least-squares optimum)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, d))
    w_star = rng.standard_normal(d)
    y = x @ w_star + sigma * rng.standard_normal(N)
    if at_optimum:
        design = np.hstack([x, np.ones((N, 1))])
        solution = np.linalg.lstsq(design, y, rcond=None)[0]
        w, c = solution[:d], solution[d]
    else:
        step = rng.standard_normal(d)
        w, c = w_star + step / np.linalg.norm(step), 0.3
    model = nn.Linear(d, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w)[None])
        model.bias.fill_(c)
    r = x @ w + c - y
    g = np.hstack([x * r[:, None], r[:, None]])               # ∂/∂w, ∂/∂c of 1/2 r²
    return Problem(model, half_mse, torch.from_numpy(x), torch.from_numpy(y), g)


def softmax_regression(d=5, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, d))
    teacher = _softmax(x @ (2 * rng.standard_normal((classes, d))).T)
    y = np.array([rng.choice(classes, p=p) for p in teacher])
    weight, bias = 0.5 * rng.standard_normal((classes, d)), 0.1 * rng.standard_normal(classes)
    model = nn.Linear(d, classes).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(weight))
        model.bias.copy_(torch.from_numpy(bias))
    error = _softmax(x @ weight.T + bias)
    error[np.arange(N), y] -= 1                                # p − onehot(y)
    g = np.hstack([np.einsum("nc,nd->ncd", error, x).reshape(N, -1), error])
    return Problem(model, F.cross_entropy, torch.from_numpy(x), torch.from_numpy(y), g)


def _softmax(z):
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def relative_error(estimate, truth):
    return abs(estimate / truth - 1)


# -- per-example gradients: torch.func against the closed forms -----------------------------------------
@pytest.mark.parametrize("make", [lambda: least_squares(1.0), softmax_regression], ids=["lsq", "softmax"])
def test_per_example_grads_match_closed_form(make):
    problem = make()
    grads = per_example_grads(problem.model, problem.loss_fn, problem.x, problem.y).numpy()
    np.testing.assert_allclose(grads, problem.g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [lambda: least_squares(1.0), softmax_regression], ids=["lsq", "softmax"])
def test_per_example_estimate_on_the_population_is_the_sample_formula(make):
    # on the whole dataset: tr = N/(N−1)·tr_pop and ‖G‖² = ‖G‖²_pop − tr_pop/(N−1), to rounding
    problem = make()
    estimate = per_example_estimate(problem.model, problem.loss_fn, problem.x, problem.y)
    assert estimate.trace_sigma == pytest.approx(problem.trace_sigma * N / (N - 1), rel=1e-10)
    assert estimate.grad_sq == pytest.approx(problem.grad_sq - problem.trace_sigma / (N - 1), rel=1e-10)
    assert (estimate.samples, estimate.method) == (N, "per_example")


# -- the estimators recover B_simple ------------------------------------------------------------------
def readings(problem, seed=0):
    """DRAWS batches: microbatch estimates, the lab's ratios, TwoBatchGNS, per-example estimates."""
    gen = torch.Generator().manual_seed(seed)
    micro, lab, per_example, two = [], [], [], TwoBatchGNS(alpha=0.02)
    for _ in range(DRAWS):
        x, y = problem.draw(gen)
        grads = microbatch_grads(problem.model, problem.loss_fn, x, y, K)
        micro.append(microbatch_estimate(grads, BATCH))
        lab.append(lab_gns(grads))
        two.update(*microbatch_norms(grads, BATCH))
        x, y = problem.draw(gen)
        per_example.append(per_example_estimate(problem.model, problem.loss_fn, x, y))
    return dict(micro=micro, lab=np.array(lab), per_example=per_example, two=two.estimate)


def pooled(estimates):
    """B_simple from the averaged (unbiased) parts: mean tr(Σ) / mean ‖G‖²."""
    return np.mean([e.trace_sigma for e in estimates]) / np.mean([e.grad_sq for e in estimates])


PROBLEMS = {"lsq-sigma0.1": lambda: least_squares(0.1), "lsq-sigma1": lambda: least_squares(1.0),
            "lsq-sigma3": lambda: least_squares(3.0), "softmax": softmax_regression}


@pytest.fixture(scope="module", params=list(PROBLEMS))
def case(request):
    problem = PROBLEMS[request.param]()
    return problem, readings(problem)


def test_problems_span_a_range_of_noise_scales():
    truths = [least_squares(s).b_simple for s in (0.1, 1.0, 3.0)]
    assert truths == sorted(truths) and truths[-1] > 5 * truths[0]      # ≈ 12, 22, 101


def test_microbatch_estimate_recovers_b_simple(case):
    # tolerance 10 %; measured: 0.1–3 % (200 batches of 256)
    problem, r = case
    assert relative_error(pooled(r["micro"]), problem.b_simple) < 0.10
    assert relative_error(np.mean([e.trace_sigma for e in r["micro"]]), problem.trace_sigma) < 0.10


def test_two_batch_ema_recovers_b_simple(case):
    # tolerance 12 %; measured: 0.5–4 % (EMA with alpha 0.02 over 200 batches)
    problem, r = case
    assert relative_error(r["two"].b_simple, problem.b_simple) < 0.12


def test_per_example_estimate_recovers_b_simple(case):
    # tolerance 10 %; measured: 0.1–3 % (200 batches of 256)
    problem, r = case
    assert relative_error(pooled(r["per_example"]), problem.b_simple) < 0.10


def test_lab_ratio_is_not_b_simple(case):
    # the lab's var/‖g_m‖² sits near (k−1)·B/(k·b + B), far below B_simple: tolerance 25 % to that
    # prediction (measured 1–13 %: the mean of a ratio is not the ratio of the means)
    problem, r = case
    b, lab = BATCH / K, r["lab"].mean()
    predicted = (K - 1) * problem.b_simple / (K * b + problem.b_simple)
    assert relative_error(lab, predicted) < 0.25
    assert lab < problem.b_simple / 5


def test_microbatch_and_two_batch_readings_coincide():
    # 1/k Σ‖g_i‖² − ‖g_m‖² = var: the two recipes give the same numbers, also for unequal microbatches
    problem = least_squares(1.0)
    gen = torch.Generator().manual_seed(1)
    for batch in (BATCH, 50):                                  # 50 = 7+7+6·6: sizes differ
        x, y = problem.draw(gen, batch)
        grads = microbatch_grads(problem.model, problem.loss_fn, x, y, K)
        micro, two = microbatch_estimate(grads, batch), two_batch_estimate(*microbatch_norms(grads, batch))
        assert two.trace_sigma == pytest.approx(micro.trace_sigma, rel=1e-9)
        assert two.grad_sq == pytest.approx(micro.grad_sq, rel=1e-9)


def test_unequal_microbatches_stay_unbiased():
    # batches of 50 in 8 microbatches (sizes 7, 7, 6, …): b is their harmonic mean; tolerance 10 %
    problem, gen = least_squares(1.0), torch.Generator().manual_seed(2)
    estimates = [microbatch_estimate(microbatch_grads(problem.model, problem.loss_fn, *problem.draw(gen, 50), K), 50)
                 for _ in range(200)]
    assert relative_error(pooled(estimates), problem.b_simple) < 0.10


def test_two_batch_ema_follows_its_closed_form():
    # EMA_n = (1−α)^(n−1)·r_1 + Σ_{j≥2} α(1−α)^(n−j)·r_j, for tr(Σ) and ‖G‖² separately
    alpha = 0.3
    smoother = TwoBatchGNS(alpha)
    rng = np.random.default_rng(0)
    parts = rng.uniform(0.5, 2.0, size=(6, 2))
    for trace_sigma, grad_sq in parts:
        smoothed = smoother.add(GNSEstimate.of(trace_sigma, grad_sq, 10, "microbatch"))
    weights = np.array([(1 - alpha) ** 5] + [alpha * (1 - alpha) ** (5 - j) for j in range(1, 6)])
    expected = weights @ parts
    assert (smoothed.trace_sigma, smoothed.grad_sq) == pytest.approx(tuple(expected), rel=1e-12)
    assert smoothed.b_simple == pytest.approx(expected[0] / expected[1], rel=1e-12)
    assert smoothed.samples == 60


# -- the tracker ----------------------------------------------------------------------------------------
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


@pytest.mark.parametrize("method", ["two_batch", "microbatch", "per_example"])
@pytest.mark.parametrize("batch", [64, 50])                     # 50: microbatches of 7 and 6
def test_measure_leaves_the_batch_mean_gradient(method, batch):
    model, gen = mlp(), torch.Generator().manual_seed(3)
    x, y = torch.randn(batch, 6, generator=gen), torch.randint(0, 3, (batch,), generator=gen)
    F.cross_entropy(model(x), y).backward()
    expected = flat_grad(model).clone()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)                        # stale gradient: must be replaced
    GNSTracker(k=8, method=method).measure(model, F.cross_entropy, x, y)
    torch.testing.assert_close(flat_grad(model), expected, rtol=1e-5, atol=1e-6)


def test_tracker_methods_read_the_same_numbers():
    problem, gen = least_squares(1.0), torch.Generator().manual_seed(4)
    x, y = problem.draw(gen)
    micro = GNSTracker(k=K, method="microbatch").measure(problem.model, problem.loss_fn, x, y)
    two = GNSTracker(k=K, method="two_batch").measure(problem.model, problem.loss_fn, x, y)
    direct = microbatch_estimate(microbatch_grads(problem.model, problem.loss_fn, x, y, K), BATCH)
    for reading in (micro, two):
        assert reading.trace_sigma == pytest.approx(direct.trace_sigma, rel=1e-9)
        assert reading.grad_sq == pytest.approx(direct.grad_sq, rel=1e-9)


@pytest.mark.parametrize("method, tolerance", [("two_batch", 0.15), ("microbatch", 0.20), ("per_example", 0.15)])
def test_tracker_converges_to_b_simple(method, tolerance):
    # 100 readings at fixed weights, alpha 0.05; measured errors: 2–6 %
    problem, gen = least_squares(1.0), torch.Generator().manual_seed(5)
    tracker = GNSTracker(every=1, k=K, alpha=0.05, method=method, window=20)
    assert tracker.b_simple is None and tracker.band is None
    for _ in range(100):
        tracker.measure(problem.model, problem.loss_fn, *problem.draw(gen))
    assert relative_error(tracker.b_simple, problem.b_simple) < tolerance
    low, high = tracker.band
    assert low < problem.b_simple < high and low < tracker.b_simple < high
    assert len(tracker.history) == 100


@pytest.mark.parametrize("method", ["two_batch", "microbatch", "per_example"])
def test_tracker_survives_readings_without_signal(method):
    # at the least-squares optimum G = 0: half the ‖G‖² estimates are negative. Nothing may raise, the
    # band's top is +inf, and GNSBased accepts every reading (it skips the non-positive ones).
    problem, gen = least_squares(1.0, at_optimum=True), torch.Generator().manual_seed(6)
    tracker, strategy = GNSTracker(every=1, k=K, method=method), GNSBased(alpha=0.5)
    for _ in range(20):
        strategy.step(gns=tracker.measure(problem.model, problem.loss_fn, *problem.draw(gen)).b_simple)
    assert any(r.b_simple < 0 for r in tracker.history)
    assert tracker.band[1] == math.inf
    assert tracker.b_simple is None or math.isfinite(tracker.b_simple)


def test_tracker_keeps_non_finite_readings_out_of_the_average():
    problem, gen = least_squares(1.0), torch.Generator().manual_seed(7)
    tracker = GNSTracker(every=1, k=K)
    tracker.measure(problem.model, problem.loss_fn, *problem.draw(gen))
    before = tracker.b_simple
    x, y = problem.draw(gen)
    x[0, 0] = math.nan                                          # an overflowed batch
    reading = tracker.measure(problem.model, problem.loss_fn, x, y)
    assert not reading.finite and tracker.history[-1] is reading
    assert tracker.b_simple == before and tracker.band is not None


def test_tracker_cuts_a_batch_smaller_than_k_into_single_examples():
    model, x, y = mlp(), torch.randn(5, 6), torch.randint(0, 3, (5,))
    reading = GNSTracker(k=8, method="microbatch").measure(model, F.cross_entropy, x, y)
    expected = microbatch_estimate(per_example_grads(model, F.cross_entropy, x, y), 5)   # k = 5, b = 1
    assert reading.samples == 5
    assert (reading.trace_sigma, reading.grad_sq) == pytest.approx((expected.trace_sigma, expected.grad_sq), rel=1e-4)


def test_zero_gradient_estimate_does_not_divide_by_zero():
    estimate = two_batch_estimate(2.0, 1, 1.0, 2)               # ‖G‖² = (2·1 − 1·2)/1 = 0
    assert (estimate.grad_sq, estimate.trace_sigma, estimate.b_simple) == (0.0, 2.0, 0.0)


def test_due_every_n_steps():
    tracker = GNSTracker(every=3)
    assert [s for s in range(10) if tracker.due(s)] == [0, 3, 6, 9]


@pytest.mark.parametrize("method", ["two_batch", "microbatch"])
def test_state_dict_round_trip_mid_run(method, tmp_path):
    problem, gen = least_squares(1.0), torch.Generator().manual_seed(8)
    batches = [problem.draw(gen) for _ in range(6)]
    tracker = GNSTracker(every=1, k=K, method=method, window=4)
    for x, y in batches[:4]:
        tracker.measure(problem.model, problem.loss_fn, x, y)
    state = json.loads(json.dumps(tracker.state_dict()))
    torch.save(tracker.state_dict(), tmp_path / "gns.pt")
    for saved in (state, torch.load(tmp_path / "gns.pt", weights_only=True)):
        resumed = GNSTracker()
        resumed.load_state_dict(saved)
        assert (resumed.method, resumed.k, resumed.window) == (method, K, 4)
        assert resumed.history == tracker.history and resumed.band == tracker.band
        assert resumed.b_simple == tracker.b_simple
    copy = GNSTracker()
    copy.load_state_dict(state)
    for x, y in batches[4:]:                                    # both continue identically
        assert copy.measure(problem.model, problem.loss_fn, x, y) == tracker.measure(
            problem.model, problem.loss_fn, x, y)
    assert copy.b_simple == tracker.b_simple and copy.band == tracker.band


# -- errors name the bad value and what is allowed ----------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, words", [
    ({"k": 1}, ValueError, ["k=1", ">= 2"]),
    ({"alpha": 0}, ValueError, ["alpha=0", "(0, 1]"]),
    ({"alpha": 1.5}, ValueError, ["alpha=1.5", "(0, 1]"]),
    ({"method": "adam"}, ValueError, ["'adam'", "'two_batch'", "'microbatch'", "'per_example'"]),
    ({"every": 0}, ValueError, ["every=0", ">= 1"]),
    ({"k": 2.5}, TypeError, ["k=2.5", "integer"]),
])
def test_tracker_rejects_bad_arguments(kwargs, error, words):
    with pytest.raises(error) as caught:
        GNSTracker(**kwargs)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_estimators_reject_bad_inputs():
    model, x, y = mlp(), torch.randn(5, 6), torch.randint(0, 3, (5,))
    with pytest.raises(ValueError, match=r"k=8 microbatches need a batch of at least 8 examples, got 5"):
        microbatch_grads(model, F.cross_entropy, x, y, 8)
    with pytest.raises(ValueError, match=r"the batch size len\(x\)=1 .*>= 2"):
        GNSTracker(k=8).measure(model, F.cross_entropy, x[:1], y[:1])
    with pytest.raises(ValueError, match=r"k \(the number of gradients\)=1 .*>= 2"):
        microbatch_estimate([torch.ones(3)], 4)
    with pytest.raises(ValueError, match=r"b_big=16 must be larger than b_small=32"):
        two_batch_estimate(1.0, 32, 0.5, 16)
    with pytest.raises(ValueError, match=r"alpha=0 .*\(0, 1\]"):
        TwoBatchGNS(alpha=0)
