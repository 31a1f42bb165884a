"""labkit.augment: crops and flips checked against numpy by hand, randomness seeded and uniform, and the
DeviceBatcher's augment generator independent of its shuffle order and saved with it."""
import io
import itertools

import numpy as np
import pytest
import torch

from labkit.augment import Augment, crop_flip
from labkit.batching import DeviceBatcher

pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int, channels: int = 2, height: int = 5, width: int = 7) -> torch.Tensor:
    """Every pixel of the batch a different value, so any misplaced pixel shows."""
    return torch.arange(n * channels * height * width, dtype=torch.float32).view(n, channels, height, width)


def numpy_crop_flip(image: np.ndarray, dy: int, dx: int, flip: bool, p: int) -> np.ndarray:
    """The recipe by hand: reflect-pad (C, H, W) by p, cut the H×W window at (dy, dx), mirror left-right."""
    height, width = image.shape[1:]
    crop = np.pad(image, ((0, 0), (p, p), (p, p)), mode="reflect")[:, dy:dy + height, dx:dx + width]
    return np.flip(crop, axis=-1) if flip else crop


@pytest.mark.parametrize("p", [0, 1, 3, 4])
def test_every_offset_and_flip_matches_numpy(p):
    """One image per (dy, dx, flip) in {0..2p}² × {no, yes}: the whole batch in one call."""
    cases = list(itertools.product(range(2 * p + 1), range(2 * p + 1), (False, True)))
    x = images(len(cases))
    dy, dx, flip = (torch.tensor(column) for column in zip(*cases))
    out = crop_flip(x, dy, dx, flip, p)
    expected = np.stack([numpy_crop_flip(x[i].numpy(), *case, p) for i, case in enumerate(cases)])
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("p", [0, 1, 2, 4])
def test_centre_offset_without_flip_is_the_identity_and_p0_flip_mirrors(p):
    x = images(3)
    centre = torch.full((3,), p)
    assert torch.equal(crop_flip(x, centre, centre, torch.zeros(3, dtype=torch.bool), p), x)
    if p == 0:
        zero = torch.zeros(3, dtype=torch.long)
        assert torch.equal(crop_flip(x, zero, zero, torch.ones(3, dtype=torch.bool), 0), x.flip(-1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("augment", [Augment(), Augment(crop_padding=0), Augment(flip=False),
                                     Augment(crop_padding=0, flip=False)])
def test_shape_dtype_device_are_kept_and_the_input_is_untouched(dtype, augment):
    x = torch.randn(6, 3, 8, 8).to(dtype)
    stored = x.clone()
    out = augment(x, torch.Generator().manual_seed(0))
    assert (out.shape, out.dtype, out.device) == (x.shape, x.dtype, x.device)
    assert out.data_ptr() != x.data_ptr() and torch.equal(x, stored)


def test_same_seed_same_batch_different_seed_different():
    x, augment = torch.randn(64, 3, 8, 8), Augment()

    def run(seed):
        return augment(x, torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    generator = torch.Generator().manual_seed(5)
    assert not torch.equal(augment(x, generator), augment(x, generator))  # a new draw at every call


def test_flip_rate_is_one_half_and_flip_false_never_flips():
    x = torch.randn(4000, 1, 4, 6)
    out = Augment(crop_padding=0)(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each image is one or the other, nothing else
    assert abs(flipped.float().mean().item() - 0.5) < 0.04  # 5 standard deviations of the rate at n = 4000
    out = Augment(crop_padding=0, flip=False)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, x)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_offsets_cover_every_value_of_the_range(p):
    """The centre pixel of out is x[c + dy − p, c + dx − p]: read (dy, dx) back from its value 100·row + col."""
    size, n = 12, 3000
    grid = torch.arange(size).view(size, 1) * 100 + torch.arange(size)
    x = grid.float().expand(n, 1, size, size)
    out = Augment(crop_padding=p, flip=False)(x, torch.Generator().manual_seed(1))
    centre = out[:, 0, size // 2, size // 2].long()
    dy, dx = centre // 100 - size // 2 + p, centre % 100 - size // 2 + p
    pairs = torch.stack([dy, dx], 1).unique(dim=0, return_counts=True)
    assert pairs[0].tolist() == [[a, b] for a in range(2 * p + 1) for b in range(2 * p + 1)]
    expected = n / (2 * p + 1) ** 2
    assert pairs[1].min().item() > 0.5 * expected and pairs[1].max().item() < 1.5 * expected


@pytest.mark.parametrize("make, error, match", [
    (lambda: Augment()(torch.zeros(3, 8, 8), torch.Generator()), ValueError,
     r"x.shape=\(3, 8, 8\) has 3 dimensions.*\(B, C, H, W\)"),
    (lambda: Augment(crop_padding=8)(torch.zeros(2, 3, 8, 8), torch.Generator()), ValueError,
     r"crop_padding=8 is too large for 8×8.*at most 7"),
    (lambda: Augment(crop_padding=4)(torch.zeros(2, 3, 4, 16), torch.Generator()), ValueError,
     r"crop_padding=4 is too large for 4×16.*at most 3"),
    (lambda: Augment(crop_padding=-1), ValueError, r"crop_padding=-1 is out of range.*>= 0"),
    (lambda: Augment(crop_padding=2.5), TypeError, r"crop_padding=2.5"),
    (lambda: Augment(flip="yes"), TypeError, r"flip='yes' must be True or False"),
    (lambda: crop_flip(torch.zeros(2, 1, 4, 4), torch.zeros(3), torch.zeros(2), torch.zeros(2), 1), ValueError,
     r"dy.shape=\(3,\): expected \(2,\)"),
    (lambda: crop_flip(torch.zeros(2, 1, 4, 4), *torch.zeros(3, 2, dtype=torch.long), -2), ValueError,
     r"crop_padding=-2 is out of range"),
    (lambda: DeviceBatcher(torch.zeros(4, 10), torch.zeros(4), augment=Augment()), ValueError,
     r"x.shape=\(4, 10\) has 2 dimensions"),
    (lambda: DeviceBatcher(torch.zeros(4, 1, 3, 3), torch.zeros(4), augment=Augment()), ValueError,
     r"crop_padding=4 is too large for 3×3"),
    (lambda: DeviceBatcher(torch.zeros(4, 1, 8, 8), torch.zeros(4), augment=lambda x, g: x), TypeError,
     r"augment=.*must be a labkit.augment.Augment"),
])
def test_bad_inputs_are_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


# DeviceBatcher with augment ---------------------------------------------------------------------------------

def dataset(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images, labels 0..n−1: a batch's labels say which samples it holds."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator), torch.arange(n)


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def epoch(batcher: DeviceBatcher, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(batcher.batches(size))


def test_without_augment_the_batches_are_the_shuffled_normalised_samples():
    """The pre-augment behaviour, computed by hand: one randperm from a generator seeded with seed."""
    x, y = dataset()
    batcher = DeviceBatcher(x, y, MEAN, STD, seed=7)
    reference = torch.Generator().manual_seed(7)
    for _epoch in range(2):
        order = torch.randperm(len(y), generator=reference)
        for (xb, yb), index in zip(epoch(batcher), order.split(16), strict=True):
            assert torch.equal(yb, index) and torch.allclose(xb, normalised(x[index]), atol=1e-6)


def test_augment_keeps_the_order_and_each_image_is_one_of_its_crops():
    x, y = dataset()
    plain = DeviceBatcher(x, y, MEAN, STD, seed=3)
    augmented = DeviceBatcher(x, y, MEAN, STD, seed=3, augment=Augment(crop_padding=2))
    cases = list(itertools.product(range(5), range(5), (False, True)))  # every (dy, dx, flip) at p = 2
    dy, dx, flip = (torch.tensor(column) for column in zip(*cases))
    for _epoch in range(2):
        changed = 0
        for (xa, ya), (xp, yp) in zip(epoch(augmented), epoch(plain), strict=True):
            assert torch.equal(ya, yp)  # the shuffle is the same with and without augmentation
            for image, source in zip(xa, xp):
                candidates = crop_flip(source.expand(len(cases), -1, -1, -1), dy, dx, flip, 2)
                assert (candidates == image).flatten(1).all(1).any()
                changed += not torch.equal(image, source)
        assert changed > len(y) // 2  # 1 case in 50 is the identity


def test_eval_batcher_and_stored_data_are_untouched_by_training_augmentation():
    x, y = dataset()
    stored = x.clone()
    train = DeviceBatcher(x, y, MEAN, STD, augment=Augment())
    test = DeviceBatcher(x, y, MEAN, STD, shuffle=False)
    epoch(train)
    (xb, yb), = test.batches(len(y))
    assert torch.equal(yb, y) and torch.allclose(xb, normalised(x), atol=1e-6)
    assert torch.equal(train.x, stored) and torch.equal(x, stored)


def test_augment_generator_is_not_the_shuffle_generator():
    batcher = DeviceBatcher(*dataset(), seed=11, augment=Augment())
    state = batcher.state_dict()
    draws = [torch.rand(8, generator=torch.Generator().set_state(state[key])) for key in ("order", "augment")]
    assert not torch.equal(*draws)
    assert torch.equal(draws[0], torch.rand(8, generator=torch.Generator().manual_seed(11)))


def test_state_dict_round_trip_reproduces_the_next_epoch():
    x, y = dataset()
    batcher = DeviceBatcher(x, y, MEAN, STD, seed=1, augment=Augment())
    epoch(batcher)
    buffer = io.BytesIO()
    torch.save(batcher.state_dict(), buffer)
    expected = epoch(batcher)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert sorted(state) == ["augment", "order"] and all(v.dtype == torch.uint8 for v in state.values())
    resumed = DeviceBatcher(x, y, MEAN, STD, seed=99, augment=Augment())  # the state, not the seed, decides
    resumed.load_state_dict(state)
    for (xr, yr), (xe, ye) in zip(epoch(resumed), expected, strict=True):
        assert torch.equal(yr, ye) and torch.equal(xr, xe)


def test_bad_states_and_repr():
    batcher = DeviceBatcher(*dataset(), augment=Augment(crop_padding=2))
    with pytest.raises(ValueError, match=r"keys \['order'\]: expected \['augment', 'order'\]"):
        batcher.load_state_dict({"order": batcher.generator.get_state()})
    with pytest.raises(TypeError, match="batcher state is a Tensor.*generator.set_state"):
        batcher.load_state_dict(batcher.generator.get_state())
    assert "augment=Augment(crop_padding=2, flip=True)" in repr(batcher)
    assert "augment=None" in repr(DeviceBatcher(*dataset()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_batcher_runs_on_the_device():
    x = torch.randn(256, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (2, 256), generator=generator)
    flip = torch.rand(256, generator=generator) < 0.5
    on_cuda = crop_flip(x.cuda(), dy.cuda(), dx.cuda(), flip.cuda(), 4)
    assert torch.equal(on_cuda.cpu(), crop_flip(x, dy, dx, flip, 4))
    images_u8, labels = dataset(64)
    batcher = DeviceBatcher(images_u8, labels, MEAN, STD, device="cuda", augment=Augment())
    xb, yb = next(batcher.batches(32))
    assert xb.is_cuda and xb.shape == (32, 3, 8, 8)
    state = batcher.state_dict()
    assert all(not v.is_cuda and v.dtype == torch.uint8 for v in state.values())
