"""Benchmark: one text classifier trained with four ways of batching messages of different lengths.

    python -m bench.sequence                              # GPU: SMS spam, gru, 3 seeds x 8 epochs, runs/bench_sequence.csv
    python -m bench.sequence --quick --out /tmp/seq.csv   # CPU smoke run, under a minute

Run from the repository root with the data where ``labkit.data.data_root()`` finds them (``LABKIT_DATA``).

The four batchers of ``labkit.buckets`` on the SMS Spam Collection (4460 training messages, 1 to 200 word
tokens, mean 20): fixed batches of ``--batch`` padded to the longest message of the dataset (``global``) or of
the batch (``dynamic``), length-bucketed batches (``bucket``), and batches filling a token budget
(``tokens``, B·L ≤ ``--max-tokens``, by default ``--batch`` × the mean length, so a batch holds about as many
tokens as a fixed one). Each run starts from the same weights (``torch.manual_seed(seed)``) and trains the
``gru`` model of ``labkit.models`` for the same number of epochs with Adam.

Columns, per batcher and seed: padding fraction (pad tokens / token slots, all epochs), steps per epoch,
mean batch size, tokens/s (real tokens per second of training, epochs after the first: the first holds
cuDNN's and the allocator's warm-up), wall time of all training epochs, test accuracy and the F1 score of the
spam class. The table prints mean ± std over seeds; the CSV keeps one row per run with the provenance.

Timing: ``time.perf_counter`` around each epoch, synchronised with the GPU at both ends; evaluation excluded.
The step is ``labkit.step.TrainStep``, the one ``fit`` takes, in float32 (TF32 inside cuDNN): ``bf16=False``,
since autocast's cuDNN RNN wrapper casts a GRU to float16 whatever dtype it is given
(``aten/src/ATen/cudnn/AutocastRNN.cpp``), which would need a GradScaler, and this model is too small to gain
from it.
"""
from __future__ import annotations

import math
import time

import pandas as pd
import torch

from bench.arguments import bench_parser
from labkit import text
from labkit.buckets import BucketBatcher, RandomBatcher, TokenBatcher
from labkit.models import build_model
from labkit.runtime import pick_device, quick_mode, save_table
from labkit.step import TrainStep

BATCHERS = ("global", "dynamic", "bucket", "tokens")


def make_batcher(kind: str, sequences, labels, args, seed: int):
    if kind in ("global", "dynamic"):
        return RandomBatcher(sequences, labels, args.batch, pad="batch" if kind == "dynamic" else "global",
                             seed=seed, device=args.device)
    if kind == "bucket":
        return BucketBatcher(sequences, labels, args.batch, pool=args.pool, seed=seed, device=args.device)
    return TokenBatcher(sequences, labels, args.max_tokens, pool=args.pool, seed=seed, device=args.device)


def train(d: text.TextData, kind: str, seed: int, args) -> dict:
    """One run: ``args.epochs`` epochs of ``gru`` fed by the batcher ``kind``, then the test scores."""
    torch.manual_seed(seed)
    model = build_model("gru", d.input_shape, d.num_classes).to(args.device)
    step = TrainStep(model, torch.optim.Adam(model.parameters(), lr=args.lr), bf16=False)
    batcher = make_batcher(kind, d.x_train, d.y_train, args, seed)
    seconds, stats = [], []
    for _epoch in range(args.epochs):
        loss_sum = torch.zeros((), device=args.device)
        step.synchronize()
        start = time.perf_counter()
        for tokens, _lengths, yb in batcher:  # (B, L) token ids, (B,), (B,)
            loss_sum += step(tokens, yb).loss  # no loss.item(): it would sync the CPU with the GPU every step
        step.synchronize()
        seconds.append(time.perf_counter() - start)
        stats.append(batcher.stats)
    timed = slice(1, None) if args.epochs > 1 else slice(None)  # after the warm-up epoch
    tokens, slots = sum(s.tokens for s in stats), sum(s.slots for s in stats)
    return {"batcher": kind, "seed": seed, "epochs": args.epochs,
            "steps_per_epoch": sum(s.steps for s in stats) / args.epochs,
            "mean_batch": len(d.y_train) * args.epochs / sum(s.steps for s in stats),
            "padding_fraction": 1 - tokens / slots,
            "tokens_per_s": sum(s.tokens for s in stats[timed]) / sum(seconds[timed]),
            "wall_s": sum(seconds), "first_epoch_s": seconds[0],
            "train_loss": loss_sum.item() / stats[-1].steps,  # mean over the last epoch
            **evaluate(model, d, args)}


@torch.no_grad()
def evaluate(model, d: text.TextData, args) -> dict:
    """Test accuracy and the F1 score of the spam class, 2·TP / (2·TP + FP + FN)."""
    model.eval()
    spam = d.classes.index("spam")
    counts = torch.zeros(3, device=args.device)  # correct, true positives, predicted + actual positives
    for tokens, _lengths, yb in TokenBatcher(d.x_test, d.y_test, args.max_tokens, device=args.device):
        predicted = model(tokens).argmax(1)
        counts += torch.stack([(predicted == yb).sum(), ((predicted == spam) & (yb == spam)).sum(),
                               (predicted == spam).sum() + (yb == spam).sum()]).float()
    model.train()
    correct, true_positives, positives = counts.tolist()
    return {"test_accuracy": correct / len(d.y_test), "spam_f1": 2 * true_positives / max(positives, 1)}


DIGITS = {"padding_fraction": 3, "steps_per_epoch": 0, "mean_batch": 1, "tokens_per_s": 0, "wall_s": 2,
          "test_accuracy": 4, "spam_f1": 3}  # the summary's columns and their rounding


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean (± std over seeds when there are several) of the main columns, one row per batcher."""
    grouped = table.groupby("batcher", sort=False)[list(DIGITS)]
    mean, std = grouped.mean(), grouped.std()
    spread = table.seed.nunique() > 1
    return pd.DataFrame({column: [f"{m:.{d}f}" + (f" ± {s:.{d}f}" if spread else "")
                                  for m, s in zip(mean[column], std[column])]
                         for column, d in DIGITS.items()}, index=mean.index)


def parse_args(argv=None):
    parser = bench_parser(__doc__, "bench_sequence", "2 epochs, one seed, 800 training and 500 test messages: "
                          "a CPU smoke run (also LABKIT_QUICK=1)")
    parser.add_argument("--batchers", nargs="+", choices=BATCHERS, default=list(BATCHERS))
    parser.add_argument("--batch", type=int, default=64, help="messages per batch (global, dynamic, bucket)")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="token budget B*L of the tokens batcher (0: --batch x mean training length)")
    parser.add_argument("--pool", type=int, default=50, help="batches per sorted pool (bucket, tokens)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    parser.add_argument("--max-length", type=int, default=200, help="tokens kept per message")
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    args.quick = args.quick or quick_mode()
    if args.quick:
        args.epochs, args.seeds = min(args.epochs, 2), args.seeds[:1]
    return args


def main(argv=None):
    args = parse_args(argv)
    d = text.load("sms-spam", max_length=args.max_length)
    if args.quick:
        d = d.subset(800, 500)
    mean_length = text.lengths(d.x_train).float().mean().item()
    longest = max(text.lengths(d.x_train).max().item(), text.lengths(d.x_test).max().item())
    args.max_tokens = args.max_tokens or max(math.ceil(args.batch * mean_length), longest)
    print(f"{d}\n{args.device}, batch {args.batch}, max_tokens {args.max_tokens}, pool {args.pool}, "
          f"{args.epochs} epochs, seeds {args.seeds}", flush=True)
    rows = []
    for seed in args.seeds:
        for kind in args.batchers:
            rows.append(train(d, kind, seed, args))
            row = rows[-1]
            print(f"seed {seed} {kind:>8}: padding {row['padding_fraction']:.3f}, {row['tokens_per_s']:,.0f} tokens/s, "
                  f"{row['wall_s']:.2f} s, test accuracy {row['test_accuracy']:.4f}, spam F1 {row['spam_f1']:.3f}",
                  flush=True)
    table = pd.DataFrame(rows)
    print(summary(table).to_string())
    save_table(table, args.out, args.device, dataset=d.name, train_messages=len(d.y_train), model="gru",
               batch=args.batch, max_tokens=args.max_tokens, pool=args.pool, lr=args.lr, max_length=args.max_length)

if __name__ == "__main__":
    main()
