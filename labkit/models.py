"""Small named models built from a dataset's shape: ``build_model(name, input_shape, num_classes)``.

    >>> model = build_model("cnn", (1, 28, 28), 10)      # input_shape and num_classes from TensorData

| name     | accepts                         | layers                                                          |
|----------|---------------------------------|-----------------------------------------------------------------|
| `mlp`    | any shape                       | flatten → 256 → 256 → classes, ReLU                             |
| `cnn`    | images (C, H, W), H, W ≥ 8      | conv-BN-ReLU 32, pool, 64, pool, 128, global average pool       |
| `resnet` | images (C, H, W), H, W ≥ 8      | ResNet-9 at half width (≈1.6 M parameters for CIFAR-10)        |
| `conv1d` | signals (C, L), L ≥ 8           | conv1d-BN-ReLU 32, 64, 128 with stride 2, flatten, linear        |

ResNet-9 is the network of the DAWNBench CIFAR-10 entries (Myrtle.ai, D. Page, "How to train your
ResNet", 2018) that airbench descends from: conv-BN-ReLU blocks, max-pooling, two residual blocks
x + f(x), a global max pool; here with widths 32-64-128-256 instead of 64-128-256-512.
The batch dimension is never fixed, so one model serves every batch size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from torch import nn

from labkit.checks import check_int

MIN_SIDE = 8  # three 2× poolings (resnet) or stride-2 convolutions (conv1d) leave at least 1 position


def conv_bn(dims: int, c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3-wide convolution (padding 1, no bias: BN has one) → batch norm → ReLU, in 1 or 2 spatial dims."""
    conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
    return nn.Sequential(conv(c_in, c_out, 3, stride=stride, padding=1, bias=False), norm(c_out), nn.ReLU())


class Residual(nn.Module):
    """y = x + f(x), the skip connection of a residual block (He et al. 2016)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),                                           # (B, prod(input_shape))
        nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),   # (B, hidden)
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),                         # (B, num_classes)
    )


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    channels = input_shape[0]
    return nn.Sequential(
        conv_bn(2, channels, 32), nn.MaxPool2d(2),    # (B, 32, H/2, W/2)
        conv_bn(2, 32, 64), nn.MaxPool2d(2),          # (B, 64, H/4, W/4)
        conv_bn(2, 64, 128),                          # (B, 128, H/4, W/4)
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),        # (B, 128)
        nn.Linear(128, num_classes),                  # (B, num_classes)
    )


def resnet(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    channels = input_shape[0]
    return nn.Sequential(
        conv_bn(2, channels, 32),                                           # (B, 32, H, W)
        conv_bn(2, 32, 64), nn.MaxPool2d(2),                                # (B, 64, H/2, W/2)
        Residual(nn.Sequential(conv_bn(2, 64, 64), conv_bn(2, 64, 64))),
        conv_bn(2, 64, 128), nn.MaxPool2d(2),                               # (B, 128, H/4, W/4)
        conv_bn(2, 128, 256), nn.MaxPool2d(2),                              # (B, 256, H/8, W/8)
        Residual(nn.Sequential(conv_bn(2, 256, 256), conv_bn(2, 256, 256))),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(),                              # (B, 256)
        nn.Linear(256, num_classes),                                        # (B, num_classes)
    )


def conv1d(input_shape: tuple[int, ...], num_classes: int) -> nn.Sequential:
    channels, length = input_shape
    for _ in range(3):
        length = (length + 1) // 2  # a stride-2, 3-wide, padding-1 convolution: L → ⌈L/2⌉
    return nn.Sequential(
        conv_bn(1, channels, 32, stride=2),       # (B, 32, L/2)
        conv_bn(1, 32, 64, stride=2),             # (B, 64, L/4)
        conv_bn(1, 64, 128, stride=2),            # (B, 128, L/8)
        nn.Flatten(),                             # (B, 128·L/8): keeps where a feature is along the signal
        nn.Linear(128 * length, num_classes),     # (B, num_classes)
    )


@dataclass(frozen=True)
class _Spec:
    build: Callable[[tuple[int, ...], int], nn.Module]
    ndim: int | None    # len(input_shape) required; None: any
    accepts: str        # for error messages


_IMAGES = f"images (C, H, W) with H, W >= {MIN_SIDE}, e.g. (1, 28, 28) or (3, 32, 32)"
_SPECS = {
    "mlp": _Spec(mlp, None, "any input shape"),
    "cnn": _Spec(cnn, 3, _IMAGES),
    "resnet": _Spec(resnet, 3, _IMAGES),
    "conv1d": _Spec(conv1d, 2, f"signals (C, L) with L >= {MIN_SIDE}, e.g. (1, 40) for mnist1d"),
}
MODELS = tuple(_SPECS)


def build_model(name: str, input_shape, num_classes: int) -> nn.Module:
    """The model ``name`` (one of ``MODELS``) for samples of ``input_shape`` and ``num_classes`` outputs.

    The model maps (B, *input_shape) to logits (B, num_classes). ``ValueError`` names the model and the
    shapes it accepts when ``input_shape`` does not fit.
    """
    if name not in _SPECS:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    spec = _SPECS[name]
    shape = tuple(check_int("input_shape entry", side, low=1) for side in input_shape)
    spatial = shape[1:] if spec.ndim is not None else ()
    if (spec.ndim is not None and len(shape) != spec.ndim) or any(side < MIN_SIDE for side in spatial):
        raise ValueError(f"model {name!r} accepts {spec.accepts}; got input_shape={shape}")
    return spec.build(shape, check_int("num_classes", num_classes, low=2))
