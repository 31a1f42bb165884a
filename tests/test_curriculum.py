"""labkit.curriculum: competence against hand values, pools against numpy's argsort, difficulty scores."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.batching import DeviceBatcher
from labkit.curriculum import Curriculum, competence, length_difficulty, loss_difficulty


@pytest.mark.parametrize("shape, expected", [
    ("linear", [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0, 1.0]),  # 0.25 + 0.75·t/4
    ("sqrt", [0.25, math.sqrt(0.296875), math.sqrt(0.53125), 0.875, 1.0, 1.0, 1.0]),  # √(1/16 + 15/16·t/4)
])
def test_competence_by_hand(shape, expected):
    got = [competence(t, epochs=4, c0=0.25, shape=shape) for t in range(7)]
    assert got == pytest.approx(expected, abs=1e-12)


def test_competence_defaults_and_c0_one():
    assert competence(0, 5) == 0.25 and competence(5, 5) == 1.0
    assert competence(2, 8, c0=0.5, shape="linear") == pytest.approx(0.625)
    assert all(competence(t, 3, c0=1.0, shape=shape) == 1.0 for t in range(5) for shape in ("linear", "sqrt"))


@pytest.mark.parametrize("c0", [1e-3, 0.1, 0.25, 0.9])
@pytest.mark.parametrize("epochs", [1, 3, 10])
def test_competence_is_monotone_clipped_and_sqrt_leads(c0, epochs):
    linear = [competence(t, epochs, c0, "linear") for t in range(epochs + 3)]
    root = [competence(t, epochs, c0, "sqrt") for t in range(epochs + 3)]
    for values in (linear, root):
        assert values[0] == pytest.approx(c0) and values[epochs:] == [1.0] * 3
        assert all(a <= b for a, b in zip(values, values[1:]))
    assert all(r >= lin - 1e-12 for r, lin in zip(root, linear))  # c_sqrt² is the chord of the convex c_lin²


def test_pools_are_the_lowest_scores_by_stable_argsort():
    scores = torch.randint(0, 5, (40,), generator=torch.Generator().manual_seed(0)).float()  # many ties
    curriculum = Curriculum(scores, c0=0.25, epochs=4, shape="linear")
    expected_order = np.argsort(scores.numpy(), kind="stable")
    assert curriculum.order.tolist() == expected_order.tolist()
    sizes = [len(curriculum.pool(t)) for t in range(6)]
    assert sizes == [10, 18, 25, 33, 40, 40]  # ⌈40·c(t)⌉ with c = 0.25, 0.4375, 0.625, 0.8125, 1
    for t, size in enumerate(sizes):
        pool = curriculum.pool(t)
        assert pool.dtype == torch.long and pool.tolist() == expected_order[:size].tolist()
        if size < 40:
            assert scores[pool].max() <= scores[expected_order[size:]].min()
    assert curriculum.fraction(1) == 0.4375


def test_pool_size_rounding():
    assert len(Curriculum(torch.arange(10.0), c0=0.3, shape="linear").pool(0)) == 3  # 0.3·10 is 3.0000000000000004
    assert len(Curriculum(torch.arange(3.0), c0=0.1).pool(0)) == 1  # ⌈0.3⌉
    assert len(Curriculum([5.0], c0=1e-12).pool(0)) == 1  # at least one sample
    assert Curriculum([2, 1, 1, 0]).order.tolist() == [3, 1, 2, 0]  # ties by index, integer scores


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4))


@pytest.mark.parametrize("training", [True, False])
def test_loss_difficulty_matches_cross_entropy_by_hand(training):
    model = tiny_model().train(training)
    x, y = torch.randn(10, 3), torch.randint(0, 4, (10,))
    scores = loss_difficulty(model, x, y, batch_size=3, transform=lambda xb: 2 * xb - 1)
    assert model.training is training
    model.eval()
    with torch.no_grad():
        expected = F.cross_entropy(model(2 * x - 1), y, reduction="none")
    assert scores.shape == (10,) and scores.dtype == torch.float32 and scores.device.type == "cpu"
    assert not scores.requires_grad and torch.allclose(scores, expected, atol=1e-6)


def test_loss_difficulty_restores_training_mode_on_error():
    model = tiny_model().train()
    with pytest.raises(RuntimeError):
        loss_difficulty(model, torch.randn(4, 5), torch.zeros(4, dtype=torch.long))  # 5 features, not 3
    assert model.training


def test_length_difficulty_and_its_curriculum():
    sequences = [torch.tensor([4, 5, 6]), torch.tensor([7]), torch.tensor([8, 9])]
    scores = length_difficulty(sequences)
    assert scores.tolist() == [3.0, 1.0, 2.0] and scores.dtype == torch.float32
    assert Curriculum(scores, c0=0.5, epochs=2, shape="linear").pool(0).tolist() == [1, 2]  # ⌈1.5⌉ shortest


def test_curriculum_pools_drive_a_device_batcher():
    x, y = torch.randn(30, 3), torch.arange(30) % 4
    batcher = DeviceBatcher(x, y, seed=0)
    model = tiny_model()
    curriculum = Curriculum(loss_difficulty(model, batcher.x, batcher.y, transform=batcher.normalise), epochs=3)
    for epoch in range(4):
        pool = curriculum.pool(epoch)
        served = torch.cat([xb for xb, _yb in batcher.batches(4, pool=pool)])
        assert len(served) == len(pool) and (len(pool) == 30) == (epoch >= 3)
        assert sorted(map(tuple, served.tolist())) == sorted(map(tuple, x[pool].tolist()))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(epoch=-1, epochs=4), ValueError, "epoch=-1"),
    (dict(epoch=0, epochs=0), ValueError, "epochs=0"),
    (dict(epoch=0.5, epochs=4), TypeError, "epoch=0.5"),
    (dict(epoch=0, epochs=4, c0=0.0), ValueError, r"c0=0 .*\(0, 1\]"),
    (dict(epoch=0, epochs=4, c0=1.5), ValueError, "c0=1.5"),
    (dict(epoch=0, epochs=4, shape="cubic"), ValueError, "shape='cubic'.*'linear', 'sqrt'"),
])
def test_bad_competence_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        competence(**kwargs)


@pytest.mark.parametrize("scores, kwargs, match", [
    (torch.zeros(2, 2), {}, r"shape \(2, 2\)"),
    (torch.zeros(0), {}, r"shape \(0,\)"),
    (torch.tensor([0.0, math.nan, 1.0, math.inf]), {}, r"indices \[1, 3\] are \[nan, inf\]"),
    (torch.zeros(3), dict(c0=0), "c0=0"),
    (torch.zeros(3), dict(epochs=0), "epochs=0"),
    (torch.zeros(3), dict(shape="step"), "shape='step'"),
])
def test_bad_curriculum_arguments_are_named(scores, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Curriculum(scores, **kwargs)


def test_bad_loss_difficulty_arguments_are_named():
    with pytest.raises(ValueError, match="x has 4 samples and y 3"):
        loss_difficulty(tiny_model(), torch.randn(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size=0"):
        loss_difficulty(tiny_model(), torch.randn(4, 3), torch.zeros(4, dtype=torch.long), batch_size=0)


def test_repr():
    assert repr(Curriculum(torch.arange(7.0), c0=0.5, epochs=3)) == \
        "Curriculum(7 samples, c0=0.5, epochs=3, shape='sqrt')"
