"""Batches of variable-length sequences, padded: four ways to choose which sequences share a batch.

A batch of B sequences padded to width L holds B·L token slots, of which Σ lengths are real; the rest is
padding the model still computes over. Each batcher reports, for its last epoch,

    padding fraction = pad tokens / token slots = 1 − Σ_batches Σ_i len_i / Σ_batches B·L

| batcher                          | batch size           | width L                | padding on SMS train |
|----------------------------------|----------------------|------------------------|----------------------|
| ``RandomBatcher(pad="global")``  | B                    | longest in the dataset | 0.90 (B = 64)        |
| ``RandomBatcher(pad="batch")``   | B                    | longest in the batch   | 0.75 (B = 64)        |
| ``BucketBatcher``                | B                    | longest in the batch   | 0.13 (B = 64)        |
| ``TokenBatcher``                 | varies, B·L ≤ budget | longest in the batch   | 0.04 (budget 1280)   |

``BucketBatcher`` and ``TokenBatcher`` cut a shuffled order into pools of about ``pool`` batches, sort each
pool by length, cut it into batches, then shuffle the batches: similar lengths share a batch, but the batches
still come in random order (the "bucket iterator" of torchtext and the ``batch_by_size`` of fairseq).
``TokenBatcher`` fills each batch up to a token budget, so short messages come in large batches and long
ones in small batches: the sequence-length-based adaptive batch size of the lab sheet.

Every sample appears exactly once per epoch. The sequences are padded once and kept on one device; an
epoch's order is copied there once, so serving a batch is a slice and a gather, with no CPU-GPU sync.

    >>> batcher = BucketBatcher(d.x_train, d.y_train, batch_size=64, device="cuda")
    >>> for tokens, n, yb in batcher:          # (B, L) int64 padded with 0, (B,) lengths, (B,) labels
    ...     train_step(tokens, yb)
    >>> batcher.stats.padding_fraction

Chapter: Sequence-length batching.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from labkit.batching import batch_size_reader, epoch_spans
from labkit.checks import check_choice, check_int
from labkit.text import lengths as sequence_lengths, pad as pad_sequences

Spans = Iterable[tuple[int, int]]  # (start, stop) of each batch in an epoch's order


@dataclass
class EpochStats:
    """What one epoch served: each batch's size B and width L, and the real tokens in them."""
    sizes: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    tokens: int = 0

    @property
    def steps(self) -> int:
        return len(self.sizes)

    @property
    def slots(self) -> int:
        """Σ B·L: the token positions the model computes over, padding included."""
        return sum(size * width for size, width in zip(self.sizes, self.widths))

    @property
    def padding_fraction(self) -> float:
        return 1 - self.tokens / self.slots if self.slots else 0.0


class SequenceBatcher(ABC):
    """Base class: sequences padded once to the longest, labels, and lengths, held on one device.

    A subclass gives ``epoch() -> (order, spans)``: a permutation of the sample indices (CPU) and the
    (start, stop) span of each batch in it. ``batches()`` serves them as ``(tokens (B, L), lengths (B,),
    labels (B,))`` with L the batch's longest sequence (``pad_global``: the dataset's longest) and records
    ``stats`` (an ``EpochStats``) as it goes.

    Args:
        sequences: 1-D int64 tensors of token ids, each with at least one token.
        labels: (N,) class labels.
        seed: seeds the CPU generator that draws the orders: the same seed gives the same epochs.
        device: where to keep the padded tokens (default: ``labels``' device).
    """
    pad_global = False

    def __init__(self, sequences: list[torch.Tensor], labels: torch.Tensor, *, seed: int = 0, device=None):
        self.lengths = sequence_lengths(sequences)  # (N,) on the CPU: batches are planned there
        if len(self.lengths) == 0 or len(self.lengths) != len(labels):
            raise ValueError(f"{len(self.lengths)} sequences and {len(labels)} labels: expected the same number, "
                             f"at least one")
        if not bool((self.lengths > 0).all()):
            empty = torch.nonzero(self.lengths == 0).flatten()[:5].tolist()
            raise ValueError(f"sequences {empty} are empty: every sample needs at least one token")
        device = labels.device if device is None else torch.device(device)
        self.tokens = pad_sequences(sequences).to(device)  # (N, longest)
        self.labels, self.device_lengths = labels.to(device), self.lengths.to(device)
        self.generator = torch.Generator().manual_seed(check_int("seed", seed, low=0))
        self.stats = EpochStats()

    @property
    def num_samples(self) -> int:
        return len(self.lengths)

    @property
    def longest(self) -> int:
        return self.tokens.shape[1]

    def __len__(self) -> int:
        """The number of samples (the number of batches depends on the lengths and the batch size)."""
        return self.num_samples

    @abstractmethod
    def epoch(self) -> tuple[torch.Tensor, Spans]:
        """This epoch's order of the samples and the (start, stop) span of each batch in it."""

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch of ``(tokens (B, L) int64, lengths (B,), labels (B,))`` covering every sample once."""
        order, spans = self.epoch()
        device_order = order.to(self.tokens.device)  # one copy per epoch, not one per batch
        self.stats = EpochStats()
        for start, stop in spans:
            n = self.lengths[order[start:stop]]
            width = self.longest if self.pad_global else int(n.max())
            self.stats.sizes.append(stop - start)
            self.stats.widths.append(width)
            self.stats.tokens += int(n.sum())
            index = device_order[start:stop]
            yield self.tokens[index, :width], self.device_lengths[index], self.labels[index]

    __iter__ = batches

    def shuffled(self) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=self.generator)

    def sorted_pools(self, pool_size: int) -> list[torch.Tensor]:
        """A shuffled order cut into pools of ``pool_size`` samples, each sorted by length (ties stay in
        the shuffled order)."""
        pools = self.shuffled().split(pool_size)
        return [pool[torch.sort(self.lengths[pool], stable=True).indices] for pool in pools]

    def shuffle_batches(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, Spans]:
        """The batches (index tensors) in random order, as one order and its spans."""
        batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator).tolist()]
        stops = torch.tensor([len(b) for b in batches]).cumsum(0).tolist()
        return torch.cat(batches), list(zip([0, *stops[:-1]], stops))


class RandomBatcher(SequenceBatcher):
    """Batches of ``batch_size`` sequences in a random order, padded to the longest in the dataset
    (``pad="global"``) or in the batch (``pad="batch"``, dynamic padding).

    ``batch_size``: an int, a zero-argument callable, or a strategy (an object with ``.batch_size``),
    read before every batch as in ``labkit.batching.DeviceBatcher``.
    """

    def __init__(self, sequences, labels, batch_size: Any = 64, *, pad: str = "batch", seed: int = 0, device=None):
        super().__init__(sequences, labels, seed=seed, device=device)
        self.read_size = batch_size_reader(batch_size)
        self.pad = check_choice("pad", pad, ("batch", "global"))
        self.pad_global = pad == "global"

    def epoch(self) -> tuple[torch.Tensor, Spans]:
        return self.shuffled(), epoch_spans(self.num_samples, self.read_size)

    def __repr__(self) -> str:
        return f"RandomBatcher({self.num_samples} sequences, pad={self.pad!r}, device={self.tokens.device})"


class BucketBatcher(SequenceBatcher):
    """Batches of ``batch_size`` sequences of similar length: pools of ``pool``·B samples of a shuffled
    order, each sorted by length and cut into batches of B, the batches then shuffled.

    ``batch_size`` is read like ``RandomBatcher``'s, once per epoch (the whole epoch is planned at its
    start). A larger ``pool`` gives less padding and less randomness in which sequences meet.
    """

    def __init__(self, sequences, labels, batch_size: Any = 64, *, pool: int = 50, seed: int = 0, device=None):
        super().__init__(sequences, labels, seed=seed, device=device)
        self.read_size = batch_size_reader(batch_size)
        self.pool = check_int("pool", pool, low=1)

    def epoch(self) -> tuple[torch.Tensor, Spans]:
        size = self.read_size()
        pools = self.sorted_pools(self.pool * size)
        return self.shuffle_batches([batch for pool in pools for batch in pool.split(size)])

    def __repr__(self) -> str:
        return f"BucketBatcher({self.num_samples} sequences, pool={self.pool}, device={self.tokens.device})"


class TokenBatcher(SequenceBatcher):
    """Batches holding at most ``max_tokens`` token slots: B·L ≤ max_tokens with L the batch's longest.

    Pools of about ``pool`` batches, ⌈pool · max_tokens / mean length⌉ samples of a shuffled order, are sorted
    by length; each pool is filled greedily, shortest first, a batch closing when the next sequence would
    take B·L over the budget. The batches are then shuffled. The batch size thus adapts to the lengths:
    about max_tokens / L sequences of length L.
    """

    def __init__(self, sequences, labels, max_tokens: int = 4096, *, pool: int = 50, seed: int = 0,
                 device=None):
        super().__init__(sequences, labels, seed=seed, device=device)
        self.max_tokens = check_int("max_tokens", max_tokens, low=1)
        if self.max_tokens < self.longest:
            raise ValueError(f"max_tokens={max_tokens} is smaller than the longest sequence ({self.longest} "
                             f"tokens), which could never fit in a batch: use max_tokens >= {self.longest}, or "
                             f"truncate the sequences (labkit.text.load(max_length=...))")
        self.pool = check_int("pool", pool, low=1)

    def epoch(self) -> tuple[torch.Tensor, Spans]:
        pool_size = math.ceil(self.pool * self.max_tokens / self.lengths.float().mean().item())
        batches = []
        for pool in self.sorted_pools(pool_size):
            start = 0
            for i, length in enumerate(self.lengths[pool].tolist()):  # ascending: the width if i joins
                if (i + 1 - start) * length > self.max_tokens:
                    batches.append(pool[start:i])
                    start = i
            batches.append(pool[start:])
        return self.shuffle_batches(batches)

    def __repr__(self) -> str:
        return (f"TokenBatcher({self.num_samples} sequences, max_tokens={self.max_tokens}, pool={self.pool}, "
                f"device={self.tokens.device})")


SEQUENCE_COLUMNS = {"padding": "padding_fraction", "steps/epoch": "steps_per_epoch", "mean B": "mean_batch",
                    "tokens/s": "tokens_per_s", "wall s": "wall_s", "acc": "test_accuracy",
                    "spam F1": "spam_f1"}
SEQUENCE_SPREAD = {"tokens/s": "tokens/s ±", "wall s": "wall ±", "acc": "acc ±", "spam F1": "F1 ±"}


def sequence_table(bench):
    """Per batcher (in the order they first appear) of a ``bench.sequence`` table (one row per batcher and
    seed): ``seeds``, then the mean over seeds of padding, steps/epoch, mean B, tokens/s, wall s, acc and
    spam F1, each of the last four followed by its std over seeds (ddof 1) as ``<name> ±``.
    Chapter: Conclusions."""
    import pandas as pd

    grouped = bench.groupby("batcher", sort=False)
    mean, std = grouped.mean(numeric_only=True), grouped.std(numeric_only=True)
    table = pd.DataFrame({"seeds": grouped.size()})
    for name, column in SEQUENCE_COLUMNS.items():
        table[name] = mean[column]
        if name in SEQUENCE_SPREAD:
            table[SEQUENCE_SPREAD[name]] = std[column]
    return table


def sequence_verdict(table, reference: str = "global") -> tuple[dict, list[str]]:
    """What wins on a ``sequence_table``: the least padding (against ``reference``, how many times less),
    the most real tokens/s, the best accuracy and spam F1, each with the batchers tied within the larger
    seed std (``comparison.leaders``), and the speed gap to ``reference`` in those stds. Returns (the
    verdict entry: accuracy, time, cost / energy, caveat; printable lines). Chapter: Conclusions."""
    from labkit.comparison import gap_in_std, leaders, with_ties

    acc_best, acc_tied = leaders(table, "acc", "acc ±")
    f1_best, f1_tied = leaders(table, "spam F1", "F1 ±")
    fast, fast_tied = leaders(table, "tokens/s", "tokens/s ±")
    lean = table.padding.idxmin()
    _, units = gap_in_std(table, fast, reference, "tokens/s", "tokens/s ±")
    at = table.at
    lines = [
        (f"least padding: {lean}, {at[lean, 'padding']:.3f} of the token slots,\n  against "
         f"{at[reference, 'padding']:.3f} for {reference} padding "
         f"({at[reference, 'padding'] / at[lean, 'padding']:.0f}× less)"),
        (f"most real tokens/s: {fast}, {at[fast, 'tokens/s']:,.0f} ± {at[fast, 'tokens/s ±']:,.0f}; "
         f"tied within noise: {', '.join(fast_tied) or 'none'}"),
        (f"  against {reference} padding: {at[fast, 'tokens/s'] / at[reference, 'tokens/s']:.2f}×, "
         f"a gap of {units:.1f}× the larger seed std"),
        (f"most accurate: {acc_best}, {at[acc_best, 'acc']:.4f} ± {at[acc_best, 'acc ±']:.4f}; "
         f"tied within noise: {', '.join(acc_tied) or 'none'}"),
        (f"best spam F1: {f1_best}, {at[f1_best, 'spam F1']:.3f} ± {at[f1_best, 'F1 ±']:.3f}; "
         f"tied within noise: {', '.join(f1_tied) or 'none'}"),
    ]
    entry = {"accuracy": with_ties(acc_best, acc_tied), "time": "tokens/s: " + with_ties(fast, fast_tied),
             "cost / energy": f"energy not measured; least padding (wasted slots): {lean}",
             "caveat": f"padding {table.padding.max() / table.padding.min():.0f}× apart, speed gap "
                       f"{units:.1f}× the seed std"}
    return entry, lines
