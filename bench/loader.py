"""Benchmark: feeding a GPU from a DeviceBatcher vs a DataLoader, and a batch size that changes every step.

    python -m bench.loader                              # GPU: cnn on CIFAR-10 shapes, writes runs/bench_loader.csv
    python -m bench.loader --quick --out /tmp/b.csv     # CPU smoke run in about a minute, tiny sizes
    python -m bench.loader --model mlp --dataset mnist --real-data

Run from the repository root (``-m`` puts it on the import path; or install labkit with ``pip install -e .``).

Measured 2026-11-23 on one H100 80GB HBM3, torch 2.11.0+cu130, defaults (cnn, CIFAR-10 shapes, 50000 samples,
median of 3 epochs): DeviceBatcher 0.30 s per epoch at batch 512 and 1024 against 1.26-1.60 s for the
DataLoader (4.3-5.4x); at batch 128 0.89-0.94 s against 1.68-1.87 s (1.9-2.0x: 391 small steps, bound by
kernel launches). Adaptive / fixed: 1.02 with cudnn.benchmark off, 1.00 with it on.

(a) loader: one training epoch of the same model, fed by ``labkit.batching.DeviceBatcher`` (uint8 data on the
    GPU, normalised per batch) vs ``torch.utils.data.DataLoader(num_workers=4, pin_memory=True, shuffle=True)``
    over uint8 CPU tensors with the per-sample transform users commonly write
    (``v2.ToDtype(float32, scale=True)`` then ``v2.Normalize``), at batch sizes 128, 512, 1024.
    Target: DataLoader / DeviceBatcher time ≥ 3 at batch ≥ 512.
(b) adaptive: one epoch whose batch size changes at every step, cycling through 256, 288, …, 1024, vs a fixed
    batch of their mean (640) over the same samples (about the same number of steps). Target: ≤ 1.05× fixed.

Each timing is the median of ``--repeats`` epochs after one warm-up epoch (CUDA events on a GPU); the warm-up
epoch's time is kept as ``*_first_s``: it holds worker start-up and cuDNN autotuning.

cuDNN: with ``torch.backends.cudnn.benchmark = True`` cuDNN times several kernels the first time it meets
each input shape and keeps the fastest. A fixed batch pays this once; a batch size that changes every step
pays it once per distinct size, so sizes are multiples of 32 (25 shapes between 256 and 1024) and the warm-up
epoch meets them all. A strategy that keeps producing new sizes would keep paying: then leave it off (the
default heuristics pick a kernel at once). ``--cudnn-benchmark both`` (the default on a GPU) measures both.

The train step is ``labkit.step.TrainStep``, the one ``fit`` takes (bf16 autocast and channels_last images on
CUDA), with plain SGD (lr 0.01, momentum 0.9). The timings above were taken before it put images in
channels_last.
Data are random uint8 images of the dataset's shape unless ``--real-data`` (timing does not depend on the
pixel values); labels are random too.
"""
from __future__ import annotations

import itertools
import statistics
import time

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from bench.arguments import bench_parser
from labkit import data
from labkit.batching import DeviceBatcher
from labkit.models import MODELS, build_model
from labkit.runtime import pick_device, save_table
from labkit.step import TrainStep

SHAPES = {"cifar10": (50000, (3, 32, 32)), "mnist": (60000, (1, 28, 28))}  # training set: N, one sample


class PerSampleDataset(Dataset):
    """uint8 CPU tensors, converted and normalised one sample at a time in ``__getitem__``."""

    def __init__(self, x, y, mean, std):
        self.x, self.y = x, y
        self.transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.transform(self.x[i]), self.y[i]


def get_data(args):
    """x uint8 (N, C, H, W) and y (N,) on the CPU, and the normalisation constants."""
    if args.real_data:
        d = data.load(args.dataset)
        x, y, mean, std = d.x_train, d.y_train, list(d.mean), list(d.std)
    else:
        n, shape = SHAPES[args.dataset]
        generator = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)
        y = torch.randint(0, 10, (n,), generator=generator)
        mean, std = [0.5] * shape[0], [0.25] * shape[0]
    n = args.samples or len(y)
    return x[:n], y[:n], mean, std


def timed(run, device) -> float:
    """Seconds taken by ``run()``; on a GPU measured with CUDA events around all the work it queued."""
    if device.type != "cuda":
        start = time.perf_counter()
        run()
        return time.perf_counter() - start
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000


def epochs(feed, args, device, cudnn_benchmark: bool) -> tuple[float, float, int]:
    """(first epoch s, median of the next ``repeats`` epochs s, steps per epoch) for a fresh model fed by
    ``feed()``, an iterable of (xb, yb) batches already on ``device``."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.manual_seed(0)
    model = build_model(args.model, args.input_shape, 10).to(device)
    train_step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    steps = []

    def one_epoch():
        steps.append(0)
        for xb, yb in feed():
            train_step(xb, yb)  # its loss is not read: .item() would sync the CPU with the GPU each step
            steps[-1] += 1

    times = [timed(one_epoch, device) for _ in range(1 + args.repeats)]
    return times[0], statistics.median(times[1:]), steps[-1]


def compare(part, batch_size, cudnn_benchmark, numerator, denominator, target, meets) -> dict:
    """One table row; ``numerator`` and ``denominator`` are (name, (first_s, median_s, steps)).
    ratio = numerator median / denominator median."""
    (num_name, (num_first, num_s, num_steps)), (den_name, (den_first, den_s, den_steps)) = numerator, denominator
    ratio = num_s / den_s
    return {"part": part, "batch_size": batch_size, "cudnn_benchmark": cudnn_benchmark,
            "numerator": num_name, "numerator_s": num_s, "numerator_first_s": num_first, "numerator_steps": num_steps,
            "denominator": den_name, "denominator_s": den_s, "denominator_first_s": den_first,
            "denominator_steps": den_steps, "ratio": ratio, "target": target,
            "meets_target": meets(ratio) if target else None}


def bench_loader(args, x, y, mean, std, device, cudnn_benchmark) -> list[dict]:
    """(a) DataLoader / DeviceBatcher time for one epoch at each batch size."""
    batcher = DeviceBatcher(x, y, mean, std, device=device)
    dataset = PerSampleDataset(x, y, mean, std)
    rows = []
    for batch_size in args.batch_sizes:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=args.workers,
                            pin_memory=device.type == "cuda")

        def from_loader():
            return ((xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)) for xb, yb in loader)

        device_batcher = epochs(lambda: batcher.batches(batch_size), args, device, cudnn_benchmark)
        data_loader = epochs(from_loader, args, device, cudnn_benchmark)
        target = "ratio >= 3" if batch_size >= 512 else ""
        rows.append(compare("loader", batch_size, cudnn_benchmark, ("DataLoader", data_loader),
                            ("DeviceBatcher", device_batcher), target, lambda r: r >= 3))
    return rows


def bench_adaptive(args, x, y, mean, std, device, cudnn_benchmark) -> dict:
    """(b) adaptive / fixed time: sizes cycling low, low+step, …, high at every step vs their mean."""
    low, high, step = args.cycle
    sizes = list(range(low, high + 1, step))
    fixed_size = round(statistics.mean(sizes) / step) * step
    batcher = DeviceBatcher(x, y, mean, std, device=device)

    def adaptive_feed():
        cycle = itertools.cycle(sizes)  # restarts at `low` every epoch
        return batcher.batches(lambda: next(cycle))

    adaptive = epochs(adaptive_feed, args, device, cudnn_benchmark)
    fixed = epochs(lambda: batcher.batches(fixed_size), args, device, cudnn_benchmark)
    return compare("adaptive", f"{low}..{high} step {step} vs {fixed_size}", cudnn_benchmark,
                   ("adaptive", adaptive), ("fixed", fixed), "ratio <= 1.05", lambda r: r <= 1.05)


def parse_args(argv=None):
    parser = bench_parser(__doc__, "bench_loader", "tiny sizes for a CPU smoke run (also without CUDA)")
    parser.add_argument("--model", choices=MODELS, default="cnn")
    parser.add_argument("--dataset", choices=tuple(SHAPES), default="cifar10",
                        help="shapes (and data with --real-data)")
    parser.add_argument("--real-data", action="store_true",
                        help="load the dataset with labkit.data instead of random pixels")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--cycle", type=int, nargs=3, default=[256, 1024, 32], metavar=("LOW", "HIGH", "STEP"),
                        help="adaptive sizes: LOW, LOW+STEP, ..., HIGH, one per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs after the warm-up one")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader num_workers")
    parser.add_argument("--samples", type=int, default=0, help="use the first N training samples (0: all)")
    parser.add_argument("--cudnn-benchmark", choices=("on", "off", "both"), default="both")
    args = parser.parse_args(argv)
    args.device = pick_device(args.device)
    if args.quick or args.device.type != "cuda":
        args.samples = args.samples or 1024
        args.repeats = min(args.repeats, 1)
        args.batch_sizes = [64, 256, 512] if args.batch_sizes == parser.get_default("batch_sizes") else args.batch_sizes
        args.cycle = [64, 256, 32] if args.cycle == parser.get_default("cycle") else args.cycle
    args.input_shape = SHAPES[args.dataset][1]
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    x, y, mean, std = get_data(args)
    settings = {"on": [True], "off": [False], "both": [False, True]}[args.cudnn_benchmark]
    if device.type != "cuda":
        settings = [False]  # cuDNN is a GPU library
    print(f"{args.model} on {args.dataset} shapes, {len(y)} samples, {device}, repeats={args.repeats}", flush=True)
    rows = []
    for cudnn_benchmark in settings:
        rows += bench_loader(args, x, y, mean, std, device, cudnn_benchmark)
        rows.append(bench_adaptive(args, x, y, mean, std, device, cudnn_benchmark))
    table = pd.DataFrame(rows)
    print(table[["part", "batch_size", "cudnn_benchmark", "numerator", "numerator_s", "denominator",
                 "denominator_s", "ratio", "target", "meets_target"]].round(4).to_string(index=False))
    save_table(table, args.out, device, model=args.model, dataset=args.dataset, samples=len(y),
               real_data=args.real_data, workers=args.workers, repeats=args.repeats)


if __name__ == "__main__":
    main()
