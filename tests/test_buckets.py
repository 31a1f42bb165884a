"""labkit.buckets: every sample once per epoch, padding fractions against hand computations, the token budget,
strategies as batch sizes, seeding, errors."""
import pytest
import torch

from labkit import data, text
from labkit.buckets import BucketBatcher, RandomBatcher, TokenBatcher

TOY_LENGTHS = [1, 2, 3, 4, 5, 6, 7, 8]  # 36 tokens


def toy(lengths=TOY_LENGTHS):
    """Sequence i is i+1 repeated length times (never 0, the padding id); its label is i."""
    return [torch.full((n,), i + 1) for i, n in enumerate(lengths)], torch.arange(len(lengths))


def random_lengths(seed, n=300, longest=60):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(1, longest + 1, (n,), generator=generator) ** 2 // longest + 1).tolist()  # skewed short


def makers(sequences, labels, seed=0):
    return {"global": RandomBatcher(sequences, labels, 4, pad="global", seed=seed),
            "dynamic": RandomBatcher(sequences, labels, 4, seed=seed),
            "bucket": BucketBatcher(sequences, labels, 4, pool=3, seed=seed),
            "tokens": TokenBatcher(sequences, labels, max_tokens=max(map(len, sequences)) * 2, pool=3, seed=seed)}


@pytest.mark.parametrize("kind", ["global", "dynamic", "bucket", "tokens"])
def test_every_sample_once_per_epoch_with_its_own_tokens(kind):
    sequences, labels = toy(random_lengths(0))
    batcher = makers(sequences, labels)[kind]
    for _epoch in range(2):
        seen = []
        for tokens, n, yb in batcher:
            assert tokens.dtype == torch.int64 and tokens.shape == (len(yb), batcher.stats.widths[-1])
            for row, length, label in zip(tokens, n.tolist(), yb.tolist()):
                assert torch.equal(row[:length], sequences[label]) and not row[length:].any()  # 0 after
            seen += yb.tolist()
        assert sorted(seen) == list(range(len(sequences)))
        assert batcher.stats.tokens == sum(map(len, sequences)) and sum(batcher.stats.sizes) == len(sequences)


def test_padding_fractions_match_hand_computations():
    sequences, labels = toy()
    global_pad = RandomBatcher(sequences, labels, 4, pad="global")
    list(global_pad)
    assert global_pad.stats.slots == 8 * 8 and global_pad.stats.padding_fraction == pytest.approx(28 / 64)
    bucket = BucketBatcher(sequences, labels, 4, pool=2)  # one pool of 8: batches {1..4}, {5..8}
    list(bucket)
    assert sorted(zip(bucket.stats.sizes, bucket.stats.widths)) == [(4, 4), (4, 8)]
    assert bucket.stats.padding_fraction == pytest.approx(12 / 48)
    # budget 8, shortest first: {1, 2} (2·2), {3, 4} (2·4), then 5, 6, 7, 8 alone (two of them would exceed 8)
    budget = TokenBatcher(sequences, labels, max_tokens=8)
    batches = sorted(sorted(n.tolist()) for _tokens, n, _y in budget)
    assert batches == [[1, 2], [3, 4], [5], [6], [7], [8]]
    assert budget.stats.slots == 4 + 8 + 5 + 6 + 7 + 8 and budget.stats.padding_fraction == pytest.approx(2 / 38)


def test_dynamic_padding_counts_each_batch_to_its_own_longest():
    sequences, labels = toy()
    batcher = RandomBatcher(sequences, labels, 3, seed=1)
    pads = [(len(n) * int(n.max()) - int(n.sum()), tokens.shape[1] == int(n.max())) for tokens, n, _y in batcher]
    assert all(fits for _pad, fits in pads) and batcher.stats.sizes == [3, 3, 2]
    assert batcher.stats.padding_fraction == pytest.approx(sum(p for p, _ in pads) / batcher.stats.slots)


@pytest.mark.parametrize("seed", range(5))
def test_token_budget_is_never_exceeded(seed):
    sequences, labels = toy(random_lengths(seed))
    budget = max(map(len, sequences)) + 7 * seed
    batcher = TokenBatcher(sequences, labels, max_tokens=budget, pool=2, seed=seed)
    assert all(tokens.numel() <= budget for tokens, _n, _y in batcher)
    assert max(batcher.stats.sizes) > min(batcher.stats.sizes)  # the batch size adapts to the lengths


def test_padding_is_ordered_on_the_sms_lengths():
    if not (data.data_root() / text.SMS_FILE).exists():
        pytest.skip(f"{text.SMS_FILE} not found under {data.data_root()}")
    d = text.load("sms-spam")
    fractions = []
    for batcher in (RandomBatcher(d.x_train, d.y_train, 64, pad="global"), RandomBatcher(d.x_train, d.y_train, 64),
                    BucketBatcher(d.x_train, d.y_train, 64), TokenBatcher(d.x_train, d.y_train, 64 * 20)):
        for _batch in batcher:
            pass
        fractions.append(batcher.stats.padding_fraction)
    assert fractions[0] > 0.85 and fractions[0] >= fractions[1] >= fractions[2] and fractions[3] < 0.1


def test_batch_size_is_read_from_a_strategy():
    class Strategy:
        batch_size = 2

    sequences, labels = toy()
    strategy = Strategy()
    sizes = []
    for _tokens, n, _y in RandomBatcher(sequences, labels, strategy):
        sizes.append(len(n))
        strategy.batch_size = 3  # read before the next batch
    assert sizes == [2, 3, 3]
    bucket = BucketBatcher(sequences, labels, strategy, pool=4)
    for _batch in bucket:
        strategy.batch_size = 1  # the bucketed epoch was planned at its start: this acts on the next one
    assert sorted(bucket.stats.sizes) == [2, 3, 3]
    list(bucket)
    assert bucket.stats.sizes == [1] * 8


def test_same_seed_same_epochs():
    sequences, labels = toy(random_lengths(1))
    for kind in ("dynamic", "bucket", "tokens"):
        first, second, other = (makers(sequences, labels, seed)[kind] for seed in (0, 0, 1))
        labels_of = [[yb.tolist() for _t, _n, yb in batcher] for batcher in (first, second, other)]
        assert labels_of[0] == labels_of[1] != labels_of[2]


def test_errors_name_the_bad_value():
    sequences, labels = toy()
    with pytest.raises(ValueError, match=r"max_tokens=7 is smaller than the longest sequence \(8 tokens\).*>= 8"):
        TokenBatcher(sequences, labels, max_tokens=7)
    with pytest.raises(ValueError, match="batch_size=0 is out of range: expected an integer >= 1"):
        RandomBatcher(sequences, labels, 0)
    with pytest.raises(ValueError, match="batch_size=0 is out of range"):
        BucketBatcher(sequences, labels, lambda: 0).epoch()
    with pytest.raises(ValueError, match="pad='left' is not allowed: expected one of 'batch', 'global'"):
        RandomBatcher(sequences, labels, 4, pad="left")
    with pytest.raises(ValueError, match="8 sequences and 3 labels"):
        BucketBatcher(sequences, labels[:3], 4)
    with pytest.raises(ValueError, match=r"sequences \[1\] are empty"):
        RandomBatcher([torch.tensor([3]), torch.tensor([], dtype=torch.long)], torch.tensor([0, 1]))


def sequence_bench():
    """Two batchers × two seeds, the columns bench.sequence writes."""
    import pandas as pd

    rows = [("global", 0, 0.6, 1000.0, 0.90, 0.8), ("global", 1, 0.6, 1200.0, 0.92, 0.8),
            ("tokens", 0, 0.02, 2000.0, 0.95, 0.9), ("tokens", 1, 0.04, 2200.0, 0.97, 0.9)]
    return pd.DataFrame([dict(batcher=b, seed=s, padding_fraction=p, steps_per_epoch=10, mean_batch=32.0,
                              tokens_per_s=t, wall_s=t / 100, test_accuracy=a, spam_f1=f)
                         for b, s, p, t, a, f in rows])


def test_sequence_table_by_hand():
    from labkit.buckets import sequence_table

    table = sequence_table(sequence_bench())
    assert list(table.index) == ["global", "tokens"]
    assert list(table.columns) == ["seeds", "padding", "steps/epoch", "mean B", "tokens/s", "tokens/s ±",
                                   "wall s", "wall ±", "acc", "acc ±", "spam F1", "F1 ±"]
    # tokens: padding (0.02 + 0.04) / 2; tokens/s 2000 and 2200 → 2100 ± √(2·100²) = 141.42; acc 0.96 ± 0.01414
    assert table.loc["tokens"].tolist() == pytest.approx([2, 0.03, 10, 32.0, 2100.0, 141.421356, 21.0, 1.41421356,
                                                          0.96, 0.0141421356, 0.9, 0.0])


def test_sequence_verdict_by_hand():
    from labkit.buckets import sequence_table, sequence_verdict

    entry, lines = sequence_verdict(sequence_table(sequence_bench()), reference="global")
    # padding 0.6 / 0.03 = 20×; tokens/s gap 1000 = 7.07 × 141.42; accuracy gap 0.05 > 0.0141; F1 gap 0.1 > 0
    assert lines == ["least padding: tokens, 0.030 of the token slots,\n  against 0.600 for global padding (20× less)",
                     "most real tokens/s: tokens, 2,100 ± 141; tied within noise: none",
                     "  against global padding: 1.91×, a gap of 7.1× the larger seed std",
                     "most accurate: tokens, 0.9600 ± 0.0141; tied within noise: none",
                     "best spam F1: tokens, 0.900 ± 0.000; tied within noise: none"]
    assert entry == {"accuracy": "tokens (ahead by more than the seed std)",
                     "time": "tokens/s: tokens (ahead by more than the seed std)",
                     "cost / energy": "energy not measured; least padding (wasted slots): tokens",
                     "caveat": "padding 20× apart, speed gap 7.1× the seed std"}
