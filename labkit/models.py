"""Small named models built from a dataset's shape: ``build_model(name, input_shape, num_classes)``.

    >>> model = build_model("cnn", (1, 28, 28), 10)      # input_shape and num_classes from TensorData

| name     | accepts                         | layers                                                          |
|----------|---------------------------------|-----------------------------------------------------------------|
| `mlp`    | any shape                       | flatten → 256 → 256 → classes, ReLU                             |
| `cnn`    | images (C, H, W), H, W ≥ 8      | conv-BN-ReLU 32, pool, 64, pool, 128, global average pool       |
| `resnet` | images (C, H, W), H, W ≥ 8      | ResNet-9 at half width (≈1.6 M parameters for CIFAR-10)        |
| `conv1d` | signals (C, L), L ≥ 8           | conv1d-BN-ReLU 32, 64, 128 with stride 2, flatten, linear        |
| `gru`    | token ids, input_shape (V,)     | embedding 64 → GRU 128 → mean over the real tokens → linear      |

``MODELS`` take float tensors (B, *input_shape) such as a ``labkit.data.TensorData`` holds; ``TEXT_MODELS``
take int64 token ids (B, L) padded with 0 at the end, as ``labkit.buckets`` serves them, and are built with
``input_shape=(vocab_size,)`` (``labkit.text.TextData.input_shape``).

ResNet-9 is the network of the DAWNBench CIFAR-10 entries (Myrtle.ai, D. Page, "How to train your
ResNet", 2018) that airbench descends from: conv-BN-ReLU blocks, max-pooling, two residual blocks
x + f(x), a global max pool; here with widths 32-64-128-256 instead of 64-128-256-512.
The batch dimension is never fixed, so one model serves every batch size (and for ``gru``, every width L).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
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


class GRUClassifier(nn.Module):
    """Embedding → one-layer GRU → mean of its outputs over the real tokens → linear.

    Input: token ids (B, L), int64, padded with ``padding_idx`` (0) *after* each sequence. The GRU runs
    over all L steps (one cuDNN call, no ``pack_padded_sequence``, whose lengths would have to be copied
    to the CPU: a sync per batch), so padding costs compute; but a unidirectional GRU's output at step t
    depends only on steps ≤ t, and the mean

        h̄ = Σ_t m_t h_t / Σ_t m_t,    m_t = 1 where token t is not padding

    reads only the real steps: the logits do not depend on how much padding follows.
    """

    def __init__(self, vocab_size: int, num_classes: int, embed: int = 64, hidden: int = 128,
                 padding_idx: int = 0):
        super().__init__()
        self.padding_idx = padding_idx
        self.embed = nn.Embedding(vocab_size, embed, padding_idx=padding_idx)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.padding_idx).unsqueeze(-1)       # (B, L, 1)
        h, _ = self.gru(self.embed(tokens))                     # (B, L, hidden)
        h = h.float().masked_fill(~mask, 0)                     # float: a bf16 sum over L loses digits
        pooled = h.sum(1) / mask.sum(1).clamp(min=1)            # (B, hidden)
        return self.head(pooled)                                # (B, num_classes)


def gru(input_shape: tuple[int, ...], num_classes: int) -> GRUClassifier:
    return GRUClassifier(input_shape[0], num_classes)


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
_TEXT_SPECS = {
    "gru": _Spec(gru, 1, "token ids: input_shape=(vocab_size,), e.g. TextData.input_shape"),
}
MODELS = tuple(_SPECS)            # float inputs (B, *input_shape)
TEXT_MODELS = tuple(_TEXT_SPECS)  # token ids (B, L)


def build_model(name: str, input_shape, num_classes: int) -> nn.Module:
    """The model ``name`` (one of ``MODELS`` or ``TEXT_MODELS``) for samples of ``input_shape`` and
    ``num_classes`` outputs.

    A model of ``MODELS`` maps (B, *input_shape) to logits (B, num_classes); one of ``TEXT_MODELS`` maps
    token ids (B, L) to logits (B, num_classes), with ``input_shape=(vocab_size,)``. ``ValueError`` names the
    model and the shapes it accepts when ``input_shape`` does not fit.
    """
    specs = _SPECS | _TEXT_SPECS
    if name not in specs:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS + TEXT_MODELS)}")
    spec = specs[name]
    shape = tuple(check_int("input_shape entry", side, low=1) for side in input_shape)
    spatial = shape[1:] if spec.ndim is not None else ()
    if (spec.ndim is not None and len(shape) != spec.ndim) or any(side < MIN_SIDE for side in spatial):
        raise ValueError(f"model {name!r} accepts {spec.accepts}; got input_shape={shape}")
    return spec.build(shape, check_int("num_classes", num_classes, low=2))
