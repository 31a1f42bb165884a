"""Random crop and horizontal flip of whole image batches on the device: no CPU round trip, no per-image loop.

The usual CIFAR-10 recipe (He et al. 2016, "Deep Residual Learning for Image Recognition", §4.2): pad each
image by p = 4 pixels on every side, take an H×W window at a random offset, and mirror it left–right with
probability ½. As in airbench (K. Jordan, ``cifar10-airbench``), the padding is *reflect* padding and the
whole batch is augmented at once on the GPU. For image i of a batch (B, C, H, W), with offsets drawn
uniformly and independently, dy_i, dx_i ∈ {0, …, 2p}, and f_i ∈ {0, 1} with P(f_i = 1) = ½:

    crop:  out[i, c, h, w] = pad(x)[i, c, h + dy_i, w + dx_i]
    flip:  out[i, c, h, w] ← out[i, c, h, W − 1 − w]            when f_i = 1

(dy_i, dx_i) = (p, p) without flip is the identity. Reflect padding mirrors about the edge pixel without
repeating it (numpy's ``mode="reflect"``): row k of pad(x), 0 ≤ k < H + 2p, is row r(k − p) of x, with

    r(j) = (H − 1) − |(H − 1) − |j||        for −p ≤ j ≤ H − 1 + p,  so p < H (and p < W) is required,

and the same for columns with W.

``crop_flip`` computes both steps as one gather from ``x``: each output pixel's source index is read from
small tables of r for every offset (built once per image size), the padded batch is never built, and the
cost is about one read and one write of the batch plus an int64 index per pixel of one channel.

Augmentation is for the *training* batches only: ``DeviceBatcher(..., augment=Augment())`` applies it after
normalising; an evaluation batcher keeps ``augment=None`` so the test set is always seen as it is.

    >>> augment = Augment(crop_padding=4, flip=True)
    >>> generator = torch.Generator(device=xb.device).manual_seed(0)
    >>> xb = augment(xb, generator)                 # (B, C, H, W) in, (B, C, H, W) out
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from labkit.checks import check_int


@dataclass(frozen=True)
class Augment:
    """Random crop with padding and horizontal flip, batched on the device (no CPU round trip).

    Args:
        crop_padding: p, the reflect padding on each side; the crop offset is uniform in {0, …, 2p}² per image.
            0: no crop. Must be < H and < W of the images.
        flip: mirror each image left–right with probability ½.
    """

    crop_padding: int = 4      # pixels on each side; 0: no crop
    flip: bool = True          # horizontal flip with probability ½

    def __post_init__(self):
        check_int("crop_padding", self.crop_padding, low=0)
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip={self.flip!r} must be True or False")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A new augmented batch, same shape, dtype and device as ``x`` (B, C, H, W); the random numbers
        (3 per image) are drawn from ``generator``, which must live on ``x``'s device."""
        self.check_images(x.shape)
        if generator.device.type != x.device.type:
            raise ValueError(f"generator is on {generator.device} but the batch is on {x.device}: make it with "
                             f"torch.Generator(device=x.device)")
        n, p = len(x), self.crop_padding
        if p == 0 and not self.flip:
            return x.clone()
        dy, dx = torch.randint(0, 2 * p + 1, (2, n), device=x.device, generator=generator)
        flip = torch.randint(0, 2, (n,), device=x.device, generator=generator)     # 1: flip, P = ½
        return crop_flip(x, dy, dx, flip if self.flip else torch.zeros_like(flip), p)

    def check_images(self, shape) -> None:
        """Raise ``ValueError`` unless ``shape`` is (B, C, H, W) with crop_padding < H and < W."""
        check_images(shape, self.crop_padding)


def check_images(shape, crop_padding: int) -> None:
    """Raise ``ValueError`` unless ``shape`` is (B, C, H, W) and 0 <= crop_padding < H and W."""
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(f"x.shape={shape} has {len(shape)} dimensions: augmentation is for image batches "
                         f"(B, C, H, W); flat or sequence data should use augment=None")
    height, width = shape[2:]
    check_int("crop_padding", crop_padding, low=0)
    if crop_padding >= min(height, width):
        raise ValueError(f"crop_padding={crop_padding} is too large for {height}×{width} images: reflect "
                         f"padding needs crop_padding < H and W, use at most {min(height, width) - 1}")


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              padding: int) -> torch.Tensor:
    """out[i, c, h, w] = pad(x)[i, c, h + dy_i, w' + dx_i], w' = W − 1 − w if flip_i else w; reflect padding.

    ``x`` (B, C, H, W); ``padding``: p, as ``Augment.crop_padding``; ``dy``, ``dx`` (B,) integer offsets in
    {0, …, 2p}; ``flip`` (B,) bool or 0/1.
    The offsets are not range-checked (that would be a CPU–GPU sync): out-of-range values give wrong pixels
    or an index error. No padded copy is made: each output pixel's source in ``x`` is looked up in small
    per-offset tables (``source_tables``), then one ``gather`` reads the batch once and writes it once.
    """
    check_images(x.shape, padding)
    n, channels, height, width = x.shape
    for name, value in (("dy", dy), ("dx", dx), ("flip", flip)):
        if value.shape != (n,):
            raise ValueError(f"{name}.shape={tuple(value.shape)}: expected ({n},), one value per image")
    row_start, col = source_tables(height, width, padding, x.device)
    index = row_start[dy].view(n, height, 1) + col[dx, flip.long()].view(n, 1, width)         # (B, H, W)
    index = index.view(n, 1, height * width).expand(n, channels, height * width)              # same for every c
    return x.reshape(n, channels, height * width).gather(2, index).view(n, channels, height, width)


@functools.lru_cache(maxsize=16)
def source_tables(height: int, width: int, padding: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each output pixel comes from, for every offset (built once per image size and device):

        row_start[dy, h] = W · r_H(h + dy − p)                            (2p + 1, H)
        col[dx, f, w]    = r_W(w' + dx − p),  w' = W − 1 − w if f else w      (2p + 1, 2, W)

    so out[i, c, h, w] = x[i, c].flatten()[row_start[dy_i, h] + col[dx_i, f_i, w]], r the reflection."""
    with torch.inference_mode(False):  # cached tables must be ordinary tensors, whatever mode built them
        offsets = torch.arange(2 * padding + 1, device=device).view(-1, 1) - padding            # (2p + 1, 1)
        row_start = _reflect(offsets + torch.arange(height, device=device), height) * width
        col = _reflect(offsets + torch.arange(width, device=device), width)
        return row_start, torch.stack([col, col.flip(1)], dim=1)


def _reflect(j: torch.Tensor, size: int) -> torch.Tensor:
    """r(j) = (size − 1) − |(size − 1) − |j||: the reflect-padding source of index j ∈ [−(size − 1), 2(size − 1)]."""
    last = size - 1
    return last - (last - j.abs()).abs()
