"""labkit.step.TrainStep against independent computations: a hand-written SGD step, the plain step for the
GNS-measured one, and the pieces a fake out-of-memory error leaves."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit import step as step_module
from labkit.gns import GNSTracker
from labkit.memory import MemoryCapExceeded
from labkit.step import TrainStep, requeue

pytestmark = pytest.mark.usefixtures("one_thread")


def data(n=12, features=3, classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=generator), torch.randint(0, classes, (n,), generator=generator)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 4))


def test_one_step_is_the_hand_written_sgd_step():
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    x, y = data()
    result = TrainStep(model, torch.optim.SGD(model.parameters(), lr=1.0))(x, y, lr=0.3)       # lr: this step's
    # cross-entropy by hand: L = mean_n (log Σ_c e^{z_nc} − z_n,y_n); dL/dz = (softmax(z) − onehot(y)) / N
    z = x @ w.T + b
    log_p = z - z.exp().sum(1, keepdim=True).log()
    loss = -log_p[torch.arange(len(y)), y].mean()
    dz = (log_p.exp() - F.one_hot(y, 4)) / len(y)
    assert result.loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.allclose(result.logits, z, atol=1e-6) and result.lr == 0.3 and result.batch == len(y)
    assert torch.allclose(model.weight, w - 0.3 * dz.T @ x, atol=1e-6)
    assert torch.allclose(model.bias, b - 0.3 * dz.sum(0), atol=1e-6)
    assert all(p.grad is None for p in model.parameters())            # cleared after the step
    assert not result.loss.requires_grad and not result.logits.requires_grad


def test_the_loss_function_is_the_one_given():
    x, y = data()
    model = mlp()
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, label_smoothing=0.2)
    smoothed = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1),
                         loss_fn=lambda z, t: F.cross_entropy(z, t, label_smoothing=0.2))(x, y)
    assert smoothed.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert smoothed.loss.item() != pytest.approx(F.cross_entropy(smoothed.logits, y).item(), rel=1e-3)


def test_the_measured_step_takes_the_same_loss_and_update_as_the_plain_one():
    x, y = data(n=13)                             # k = 4 does not divide 13: microbatches of 4, 3, 3, 3
    plain_model, measured_model = mlp(), mlp()
    tracker = GNSTracker(every=2, k=4)
    plain = TrainStep(plain_model, torch.optim.SGD(plain_model.parameters(), lr=0.1, momentum=0.9))
    measured = TrainStep(measured_model, torch.optim.SGD(measured_model.parameters(), lr=0.1, momentum=0.9),
                         gns=tracker)
    for _ in range(3):                            # steps 0 and 2 are measured, step 1 is plain
        a, b = plain(x, y), measured(x, y)
        assert b.loss.item() == pytest.approx(a.loss.item(), rel=1e-6)
        assert torch.allclose(a.logits, b.logits, atol=1e-6)          # no BatchNorm: microbatches agree
        for p, q in zip(plain_model.parameters(), measured_model.parameters()):
            assert torch.allclose(p, q, atol=1e-6)
    assert len(tracker.history) == 2 and measured.steps == 3
    assert all(p.grad is None for p in measured_model.parameters())


class FakeOOM(nn.Module):
    """An MLP that runs out of (CUDA) memory for a batch of more than ``fits`` examples; records what trained."""

    def __init__(self, fits: int):
        super().__init__()
        self.net, self.fits, self.seen = mlp(), fits, []

    def forward(self, x):
        if len(x) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} MiB\nmore")
        self.seen.append(x)
        return self.net(x)


def test_out_of_memory_requeues_the_examples_in_smaller_batches(monkeypatch):
    freed = []
    monkeypatch.setattr(step_module, "free_memory", lambda: freed.append(1))
    model = FakeOOM(fits=4)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = data(n=10)
    asked, lrs = [], []

    def shrink(batch, failure):
        asked.append((batch, failure))
        return batch // 2

    results = list(step.with_requeue(x, y, shrink, lr=lambda batch: lrs.append(batch) or 0.1 * batch))
    # 10 fails → halves of 5; the first 5 fails → it and the waiting 5 are re-split into batches of 2
    assert asked == [(10, "OutOfMemoryError: CUDA out of memory. Tried to allocate 10 MiB"),
                     (5, "OutOfMemoryError: CUDA out of memory. Tried to allocate 5 MiB")]
    assert [r.batch for r in results] == [2, 2, 2, 2, 2] and all(r.requeued for r in results)
    assert lrs == [10, 5, 2, 2, 2, 2, 2] and [r.lr for r in results] == pytest.approx([0.2] * 5)
    assert torch.equal(torch.cat(model.seen), x)                     # every example once, in order
    assert step.ooms == 2 and step.steps == 5 and len(freed) == 2
    # the same as five plain steps of two examples each
    reference = mlp()
    plain = TrainStep(reference, torch.optim.SGD(reference.parameters(), lr=0.2))
    for xb, yb in zip(x.split(2), y.split(2)):
        plain(xb, yb)
    for p, q in zip(reference.parameters(), model.net.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_a_batch_that_fits_is_one_step_and_not_requeued():
    model = FakeOOM(fits=100)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    results = list(step.with_requeue(*data(n=10), shrink=lambda batch, failure: pytest.fail("no OOM expected")))
    assert [(r.batch, r.requeued) for r in results] == [(10, False)] and step.ooms == 0


def test_giving_up_and_other_errors_propagate_with_the_gradients_cleared():
    model = FakeOOM(fits=4)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1))

    def give_up(batch, failure):
        raise MemoryCapExceeded(f"batch {batch} ran out of memory ({failure}): lower max_batch")

    with pytest.raises(MemoryCapExceeded, match="batch 10 ran out of memory"):
        list(step.with_requeue(*data(n=10), give_up))
    broken = TrainStep(nn.Linear(5, 4), torch.optim.SGD(nn.Linear(5, 4).parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="cannot be multiplied"):       # not an OOM: raised, not requeued
        list(broken.with_requeue(*data(n=10), give_up))
    assert all(p.grad is None for p in model.parameters()) and step.steps == 0


def test_requeue_keeps_the_order_of_the_failed_batch_and_the_waiting_pieces():
    x = torch.arange(10.0).unsqueeze(1)
    pending = [(x[7:], x[7:, 0]), (x[4:7], x[4:7, 0])]             # a stack: x[4:7] is next
    pieces = requeue(x[:4], x[:4, 0], pending, 3)
    assert [p[1].tolist() for p in reversed(pieces)] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]


def test_a_watch_budget_is_an_out_of_memory_error_and_usage_is_reported():
    from labkit.memory import MemoryWatch, StepMemory

    model = mlp()
    x, y = data(n=8)
    estimate = StepMemory.of(model, x[:1])
    watch = MemoryWatch(model, x[:1], budget_bytes=estimate(4))
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), watch=watch)
    results = list(step.with_requeue(x, y, lambda batch, failure: batch // 2))
    assert [r.batch for r in results] == [4, 4] and step.ooms == 1
    assert results[0].usage == pytest.approx(1.0) and math.isfinite(results[1].usage)
