"""Batches from a dataset and a batch size that may change at every step.

``DeviceBatcher`` keeps the whole dataset on one device, in the pattern of airbench's ``CifarLoader``: one
``torch.randperm`` per epoch drawn on the device, each batch a slice of that permutation, converted and
normalised on the device, per channel c:

    x̂ = (x/255 − mean_c) / std_c    for uint8 images      x̂ = (x − mean_c) / std_c    for float data

No worker processes, no host-to-device copies and no CPU–GPU sync inside the loop. At MNIST and CIFAR-10
sizes this is what keeps a small model's GPU busy: a DataLoader's per-sample work costs more than the step.

The batch size is an int, a zero-argument callable, or an object with a ``batch_size`` attribute (a
strategy). It is read before every batch, so a strategy stepped inside the loop acts on the next batch:

    >>> batcher = DeviceBatcher(d.x_train, d.y_train, d.mean, d.std, device="cuda")
    >>> for xb, yb in batcher.batches(strategy):       # or batches(lambda: strategy.batch_size), batches(256)
    ...     loss = train_step(xb, yb); strategy.step(loss=loss)

``batches(size, pool=indices)`` serves only the samples in ``pool`` this epoch: the easy-to-hard pools of
``labkit.curriculum.Curriculum``.

``DeviceBatcher(..., augment=Augment())`` crops and flips each training batch on the device after normalising
(``labkit.augment``), with its own generator: turning augmentation on does not change the shuffling order.
``state_dict()`` holds both generators' states; save it between epochs to resume the same batches.

``StrategyBatchSampler`` gives a ``torch.utils.data.DataLoader`` the same changing batch size: a
``BatchSampler`` with ``set_epoch``, ``state_dict`` for mid-epoch resume, and a shard of every global batch per
rank under DDP. ``StrategyBatches`` groups a stream of samples (an ``IterableDataset``) the same way:

    >>> sampler = StrategyBatchSampler(strategy, len(dataset), seed=0)   # num_replicas/rank from torch.distributed
    >>> loader = DataLoader(dataset, batch_sampler=sampler)              # num_workers > 0 delays a new size
    >>> for epoch in range(epochs):
    ...     sampler.set_epoch(epoch)
    ...     for xb, yb in loader: ...
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import BatchSampler, IterableDataset

from labkit.augment import Augment
from labkit.checks import check_int


class DeviceBatcher:
    """The dataset ``x`` (N, C, ...), labels ``y`` (N,) held on one device, served as normalised batches.

    Args:
        x, y: samples and labels; uint8 samples are scaled by 1/255 before normalising.
        mean, std: one value per channel (``x.shape[1]``), e.g. ``TensorData.mean``; both or neither
            (neither: no normalisation beyond the 1/255).
        shuffle: a new random order every epoch (default True); False serves the dataset in order.
        seed: seeds the device's ``torch.Generator`` for the order (``generator``) and, with seed +
            ``AUGMENT_SEED_OFFSET``, a second one for augmentation (``augment_generator``): the same seed gives
            the same epochs on the same device type (CPU and CUDA draw different numbers).
        drop_last: skip a final batch smaller than the size asked for.
        device: where to keep the data (default: ``x``'s device).
        augment: an ``Augment`` applied to every batch after normalising (training data only; default None).
            x must then be images (N, C, H, W).
    """

    AUGMENT_SEED_OFFSET = 0x9E3779B9  # augment seed = seed + this; it changes the low 32 bits a CPU generator uses

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean=None, std=None, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, device=None, augment: Augment | None = None):
        if len(y) == 0:
            raise ValueError(f"x.shape={tuple(x.shape)}: the dataset is empty; a batcher needs at least one sample")
        if x.ndim < 2 or len(x) != len(y):
            raise ValueError(f"x.shape={tuple(x.shape)} and y.shape={tuple(y.shape)}: expected x (N, C, ...) "
                             f"and y (N,) with the same N")
        if augment is not None:
            if not isinstance(augment, Augment):
                raise TypeError(f"augment={augment!r} must be a labkit.augment.Augment or None, e.g. "
                                f"Augment(crop_padding=4, flip=True)")
            augment.check_images(x.shape)
        device = x.device if device is None else torch.device(device)
        self.x, self.y = x.to(device), y.to(device)
        self.scale, self.shift = _affine(x, mean, std, device)
        self.shuffle, self.drop_last, self.augment = shuffle, drop_last, augment
        seed = check_int("seed", seed, low=0)
        self.generator = torch.Generator(device=device).manual_seed(seed)  # the order of every epoch
        self.augment_generator = torch.Generator(device=device).manual_seed(
            (seed + self.AUGMENT_SEED_OFFSET) % 2**64)

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def __len__(self) -> int:
        """The number of samples (the number of batches depends on the batch size, given per epoch)."""
        return self.num_samples

    def batches(self, batch_size, pool: torch.Tensor | None = None,
                part: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: ``(xb, yb)`` pairs covering every sample once, xb float32 and normalised.

        ``batch_size`` (int, zero-argument callable, or object with ``.batch_size``) is read before each batch.
        ``pool``: a 1-D tensor of the sample indices this epoch may use (e.g. ``Curriculum.pool(epoch)``);
        the epoch then serves those samples only, shuffled if ``shuffle`` (else in the pool's order), each as
        often as it appears in the pool. The pool is checked and copied to the device once per epoch.
        ``part=(r, R)``: DDP rank r's share. Every rank draws the same order and augmentation (same seed),
        builds the whole (global) batch of the size read and keeps its piece r of R equal pieces, the
        examples [r·B/R, (r+1)·B/R): the ranks together train on the batches one process would. A batch
        that R does not divide is a ``ValueError``.
        """
        read_size = batch_size_reader(batch_size)
        rank, replicas = part
        order = self._epoch_order(pool)
        n = self.num_samples if order is None else len(order)
        for start, stop in epoch_spans(n, read_size, self.drop_last):
            index = slice(start, stop) if order is None else order[start:stop]
            xb = self.normalise(self.x[index])
            xb, yb = (xb if self.augment is None else self.augment(xb, self.augment_generator)), self.y[index]
            if replicas > 1:
                piece = _piece(stop - start, replicas)
                xb, yb = xb[rank * piece:(rank + 1) * piece], yb[rank * piece:(rank + 1) * piece]
            yield xb, yb

    def _epoch_order(self, pool: torch.Tensor | None) -> torch.Tensor | None:
        """The sample indices of one epoch in serving order, drawn with the batcher's seeded generator;
        None when every sample is served in order (batches are then plain slices)."""
        device = self.x.device
        if pool is None:
            return torch.randperm(self.num_samples, device=device, generator=self.generator) if self.shuffle else None
        pool = _check_pool(pool, self.num_samples).to(device)
        return pool[torch.randperm(len(pool), device=device, generator=self.generator)] if self.shuffle else pool

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        """x̂ = x·scale − shift with scale = 1/(k·std), shift = mean/std, k = 255 for uint8 else 1.
        Out of place: a float batch may be a view of the stored data."""
        return xb.float() * self.scale - self.shift

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both generators' states, ``{"order": ..., "augment": ...}`` as CPU uint8 tensors (loadable with
        ``torch.load(..., weights_only=True)``). Taken between epochs, it resumes the same next epochs."""
        return {"order": self.generator.get_state(), "augment": self.augment_generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the generators from ``state_dict()`` (tensors may come back on any device)."""
        if not isinstance(state, dict):
            raise TypeError(f"batcher state is a {type(state).__name__}: expected the dict of "
                            f"DeviceBatcher.state_dict(); a lone tensor is the order generator's state alone, "
                            f"restore it with batcher.generator.set_state(tensor)")
        if set(state) != {"order", "augment"}:
            raise ValueError(f"batcher state has keys {sorted(state)}: expected ['augment', 'order'] from "
                             f"DeviceBatcher.state_dict()")
        self.generator.set_state(state["order"].cpu())
        self.augment_generator.set_state(state["augment"].cpu())

    def __repr__(self) -> str:
        return (f"DeviceBatcher(x={tuple(self.x.shape)} {self.x.dtype}, device={self.x.device}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, augment={self.augment})")


class StrategyBatchSampler(BatchSampler):
    """Index batches for ``DataLoader(dataset, batch_sampler=...)`` whose size is read before each batch.

    Args:
        strategy_or_size: an object with ``.batch_size`` (a strategy), a zero-argument callable, or an int:
            the GLOBAL batch size B, summed over all ranks.
        num_samples: N, the dataset's length; batches hold indices in [0, N − 1].
        shuffle: epoch e serves ``randperm(N)`` drawn from ``seed + e`` (default True); False serves 0..N−1.
        seed: the base seed (default 0), or ``generator``: one int drawn from it at construction is the seed.
        drop_last: skip a final global batch smaller than B.
        num_replicas, rank: the ranks sharing each global batch (default: from ``torch.distributed`` when it
            is initialised, else 1 and 0). Rank r gets the contiguous piece ``[r·b, (r+1)·b)`` of every global
            batch, b = B // num_replicas: same sizes on every rank, no index on two ranks. B must be a multiple
            of num_replicas (ValueError otherwise); the final short batch of an epoch, r' < B samples, gives
            each rank r' // num_replicas and drops the r' mod num_replicas left over (skipped if that is 0).

    Epochs work like ``DistributedSampler``: ``set_epoch(e)`` before each epoch (Lightning calls it) gives
    the same order for the same (seed, e) on every rank and after a restart. A loop that does not call it
    still gets a new order: a pass that runs to the end moves the sampler to the next epoch. The sampler
    is a cursor: a pass broken off mid-epoch continues there at the next ``iter()``, and ``state_dict()``
    ``{"epoch", "samples_served"}`` (global samples of this epoch already handed out) resumes the rest of the
    epoch after ``load_state_dict()``, at the batch sizes read then.

    ``batch_size`` is this rank's current size, B // num_replicas; ``len()`` is the number of batches of an
    epoch at the current B, ⌈N/B⌉ (⌊N/B⌋ with ``drop_last``): both change when the strategy changes B.

    Prefetch lag: ``DataLoader(num_workers=w, prefetch_factor=p)`` draws index batches ``w·p`` ahead of the
    loop, so a size set after batch k first appears in batch k + 1 + w·p (w = 0: batch k + 1, no lag), and
    ``state_dict()`` counts those prefetched batches as served. To cut the lag use ``num_workers=0``,
    ``prefetch_factor=1``, or change the size (and save state) at epoch boundaries. With Lightning, pass
    ``Trainer(use_distributed_sampler=False)``: this sampler shards itself.
    """

    def __init__(self, strategy_or_size: Any, num_samples: int, shuffle: bool = True, seed: int | None = None,
                 drop_last: bool = False, *, generator: torch.Generator | None = None,
                 num_replicas: int | None = None, rank: int | None = None):
        self.read_size = batch_size_reader(strategy_or_size)
        self.num_samples = check_int("num_samples", num_samples, low=1)
        self.sampler = range(self.num_samples)  # the index space, as BatchSampler has it (order is drawn here)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        if generator is not None and seed is not None:
            raise ValueError(f"seed={seed} and generator={generator!r}: give one of them (the seed is drawn from "
                             f"the generator)")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator={generator!r} must be a torch.Generator, e.g. "
                                f"torch.Generator().manual_seed(0), or pass seed=0")
            seed = int(torch.randint(0, 2**62, (), generator=generator))
        self.seed = check_int("seed", 0 if seed is None else seed, low=0)
        self.num_replicas, self.rank = _replicas(num_replicas, rank)
        self.epoch, self.samples_served = 0, 0

    @property
    def batch_size(self) -> int:
        """This rank's current batch size: the strategy's global size B // num_replicas."""
        return self.global_batch_size() // self.num_replicas

    def global_batch_size(self) -> int:
        """B, read from the strategy now; checked to be a multiple of ``num_replicas``."""
        size = self.read_size()
        _piece(size, self.num_replicas)
        return size

    def set_epoch(self, epoch: int) -> None:
        """Serve epoch ``epoch`` next, from its start; the same epoch again keeps a mid-epoch position."""
        epoch = check_int("epoch", epoch, low=0)
        if epoch != self.epoch:
            self.epoch, self.samples_served = epoch, 0

    def epoch_order(self, epoch: int) -> list[int]:
        """The global order of ``epoch``: ``randperm(N)`` from seed + epoch, or 0..N−1 without shuffle."""
        if not self.shuffle:
            return list(range(self.num_samples))
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        order, n, replicas = self.epoch_order(self.epoch), self.num_samples, self.num_replicas
        while self.samples_served < n:
            start, size = self.samples_served, self.global_batch_size()
            stop = min(start + size, n)
            piece = (stop - start) // replicas  # == size // replicas except for the epoch's last batch
            if piece == 0 or (self.drop_last and stop - start < size):
                break
            self.samples_served = stop
            first = start + self.rank * piece
            yield order[first:first + piece]
        self.epoch, self.samples_served = self.epoch + 1, 0

    def __len__(self) -> int:
        size, n = self.global_batch_size(), self.num_samples
        last = n % size
        return n // size + int(bool(last) and not self.drop_last and last >= self.num_replicas)

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "samples_served": s}``: the next batch starts at position s of epoch e's order."""
        return {"epoch": self.epoch, "samples_served": self.samples_served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at the position saved by ``state_dict()`` (the same seed, N and shuffle are assumed)."""
        if not isinstance(state, dict):
            raise TypeError(f"sampler state is a {type(state).__name__}: expected the dict of "
                            f"StrategyBatchSampler.state_dict(), e.g. {{'epoch': 3, 'samples_served': 512}}")
        if set(state) != {"epoch", "samples_served"}:
            raise ValueError(f"sampler state has keys {sorted(state)}: expected ['epoch', 'samples_served'] from "
                             f"StrategyBatchSampler.state_dict()")
        epoch = check_int("state['epoch']", state["epoch"], low=0)
        served = check_int("state['samples_served']", state["samples_served"], low=0, high=self.num_samples)
        self.epoch, self.samples_served = epoch, served

    def __repr__(self) -> str:
        return (f"StrategyBatchSampler(num_samples={self.num_samples}, shuffle={self.shuffle}, seed={self.seed}, "
                f"drop_last={self.drop_last}, num_replicas={self.num_replicas}, rank={self.rank}, "
                f"epoch={self.epoch}, samples_served={self.samples_served})")


def _replicas(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """(num_replicas, rank) checked; a None is read from ``torch.distributed`` if initialised, else 1 or 0."""
    dist = torch.distributed
    if (num_replicas is None or rank is None) and dist.is_available() and dist.is_initialized():
        num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
        rank = dist.get_rank() if rank is None else rank
    num_replicas = check_int("num_replicas", 1 if num_replicas is None else num_replicas, low=1)
    rank = check_int("rank", 0 if rank is None else rank, low=0)
    if rank >= num_replicas:
        raise ValueError(f"rank={rank} is out of range for num_replicas={num_replicas}: expected a rank in "
                         f"[0, {num_replicas - 1}]")
    return num_replicas, rank


class StrategyBatches(IterableDataset):
    """Batches of the current size from a stream of samples, for ``DataLoader(StrategyBatches(...),
    batch_size=None)`` or a plain loop.

    ``iterable`` yields samples (re-iterable for several epochs, e.g. an ``IterableDataset``); the size is
    read from ``strategy_or_size`` before each batch; each batch is a list, or ``collate_fn(list)`` (e.g.
    ``torch.utils.data.default_collate``). The last batch is shorter, or skipped with ``drop_last``.
    Read the size in the process that steps the strategy: with DataLoader workers each worker holds a copy
    of the strategy, which never changes, so use ``num_workers=0``.
    """

    def __init__(self, iterable, strategy_or_size: Any, collate_fn: Callable[[list], Any] | None = None,
                 drop_last: bool = False):
        super().__init__()
        self.iterable, self.read_size = iterable, batch_size_reader(strategy_or_size)
        self.collate_fn, self.drop_last = collate_fn, bool(drop_last)

    def __iter__(self) -> Iterator[Any]:
        samples = iter(self.iterable)
        while True:
            size = self.read_size()
            batch = list(itertools.islice(samples, size))
            if not batch or (self.drop_last and len(batch) < size):
                return
            yield batch if self.collate_fn is None else self.collate_fn(batch)


def batch_size_reader(source: Any) -> Callable[[], int]:
    """A zero-argument function giving the current batch size of ``source``: an object with ``.batch_size``,
    a zero-argument callable, or an int. Every reading is checked to be an integer >= 1."""
    if hasattr(source, "batch_size"):
        return lambda: check_int("batch_size", source.batch_size, low=1)
    if callable(source):
        return lambda: check_int("batch_size", source(), low=1)
    size = check_int("batch_size", source, low=1)
    return lambda: size


def epoch_spans(n: int, read_size: Callable[[], int], drop_last: bool = False) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each batch of one epoch over n samples, calling ``read_size()`` before each one.
    The last span is cut at n (or skipped with ``drop_last`` if it is short)."""
    start = 0
    while start < n:
        stop = start + read_size()
        if stop > n:
            if drop_last:
                return
            stop = n
        yield start, stop
        start = stop


def _piece(size: int, replicas: int) -> int:
    """Each rank's share of a global batch of ``size``, which ``replicas`` must divide."""
    if size % replicas:
        below = size - size % replicas
        fix = f"{below} or {below + replicas}" if below else f"{replicas}"
        raise ValueError(f"batch_size={size} is not a multiple of num_replicas={replicas}: each of the {replicas} "
                         f"ranks gets an equal piece of the global batch; use {fix}")
    return size // replicas


def _check_pool(pool: torch.Tensor, n: int) -> torch.Tensor:
    """``pool`` as int64 after checking it is a non-empty 1-D integer tensor of indices in [0, n − 1]."""
    if not isinstance(pool, torch.Tensor):
        raise TypeError(f"pool is a {type(pool).__name__}: expected a 1-D tensor of sample indices, e.g. "
                        f"Curriculum.pool(epoch) or torch.tensor(indices)")
    if pool.ndim != 1 or len(pool) == 0:
        raise ValueError(f"pool has shape {tuple(pool.shape)}: expected a non-empty 1-D tensor of sample indices")
    if pool.dtype.is_floating_point or pool.dtype.is_complex or pool.dtype == torch.bool:
        raise TypeError(f"pool has dtype {pool.dtype}: expected integer sample indices (torch.long), not a mask "
                        f"or floats; a bool mask converts with mask.nonzero().flatten()")
    outside = pool[(pool < 0) | (pool >= n)]
    if len(outside):
        raise ValueError(f"pool holds indices {outside[:5].tolist()} outside [0, {n - 1}], the {n} samples "
                         f"of this batcher")
    return pool.long()


def _affine(x: torch.Tensor, mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    """scale = 1/(k·std) and shift = mean/std shaped (1, C, 1, ...), so x̂ = x·scale − shift."""
    if (mean is None) != (std is None):
        raise ValueError(f"mean={mean!r}, std={std!r}: give both (one value per channel) or neither")
    channels = x.shape[1]
    mean = torch.zeros(channels) if mean is None else torch.as_tensor(mean, dtype=torch.float32).flatten()
    std = torch.ones(channels) if std is None else torch.as_tensor(std, dtype=torch.float32).flatten()
    for label, values in (("mean", mean), ("std", std)):
        if values.numel() != channels:
            raise ValueError(f"{label}={values.tolist()} has {values.numel()} values: expected one per channel, "
                             f"{channels} for x.shape={tuple(x.shape)}")
    if not bool((std > 0).all()):
        raise ValueError(f"std={std.tolist()} must be > 0 in every channel")
    pixel = 255.0 if x.dtype == torch.uint8 else 1.0
    shape = (1, channels) + (1,) * (x.ndim - 2)
    return (1.0 / (pixel * std)).view(shape).to(device), (mean / std).view(shape).to(device)
