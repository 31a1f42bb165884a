"""labkit.models: each model maps its datasets' shapes to (N, num_classes) and trains (backward runs)."""
import re

import pytest
import torch
from torch import nn

from labkit.models import MODELS, build_model

MNIST, CIFAR, MNIST1D, DIGITS = (1, 28, 28), (3, 32, 32), (1, 40), (1, 8, 8)
FITS = [("mlp", MNIST), ("mlp", CIFAR), ("mlp", MNIST1D), ("mlp", DIGITS),
        ("cnn", MNIST), ("cnn", CIFAR), ("cnn", DIGITS),
        ("resnet", CIFAR), ("resnet", MNIST), ("conv1d", MNIST1D)]


@pytest.mark.parametrize("name, shape", FITS)
def test_forward_gives_logits_and_backward_reaches_every_parameter(name, shape):
    torch.manual_seed(0)
    model = build_model(name, shape, 10)
    logits = model(torch.randn(4, *shape))  # (N, C, ...) in, (N, num_classes) out
    assert logits.shape == (4, 10)
    nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_batch_size_can_change_between_calls():
    model = build_model("cnn", CIFAR, 10)
    assert [model(torch.randn(n, *CIFAR)).shape[0] for n in (2, 5, 3)] == [2, 5, 3]


def test_resnet_is_small():
    params = sum(p.numel() for p in build_model("resnet", CIFAR, 10).parameters())
    assert 0.5e6 < params < 2e6


def test_every_model_is_covered():
    assert {name for name, _shape in FITS} == set(MODELS)


@pytest.mark.parametrize("name, shape", [("cnn", MNIST1D), ("resnet", (3, 4, 4)), ("conv1d", MNIST),
                                         ("conv1d", (1, 5))])
def test_wrong_shapes_name_the_model_and_what_it_accepts(name, shape):
    with pytest.raises(ValueError, match=rf"model '{name}' accepts .*; got input_shape={re.escape(str(shape))}"):
        build_model(name, shape, 10)


def test_unknown_model_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'vit'.*mlp, cnn, resnet, conv1d"):
        build_model("vit", CIFAR, 10)
    with pytest.raises(ValueError, match="num_classes=1"):
        build_model("mlp", MNIST, 1)
    with pytest.raises(ValueError, match="input_shape entry=0"):
        build_model("mlp", (0, 28), 10)
