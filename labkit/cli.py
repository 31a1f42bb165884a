"""``labkit`` on the command line. Thin: parses arguments (``labkit.arguments``) and calls the package.

    labkit train --dataset mnist --model mlp --strategy linear --b-init 64 --a 64 --epochs 10 --out runs/mnist-linear
    labkit train --nproc 2 --dataset mnist --model mlp --strategy loss --multiple-of 2 --out runs/mnist-ddp
    labkit train --dataset cifar10 --model cnn --strategy loss --delta ema --alpha 0.3 --epochs 20 --out runs/c10-loss
    labkit tune --dataset cifar10 --model resnet --epochs 16 --runs fixed:b_init=256 --out runs/tune-c10
    labkit sweep ... --tuned runs/tune-c10 --runs fixed:b_init=256 --seeds 0 1 2 --out runs/c10
    labkit find-batch --dataset cifar10 --model cnn --out runs/find-c10
    labkit serve-bench --device cuda --out runs/bench_serving.csv
    labkit replay runs/c10-loss --csv runs/c10-loss/replay.csv
    labkit train --help
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

from labkit.arguments import (build_parser, check_nproc, check_numbers, check_out, check_runs, run_config,
                              strategy_flags)


# -- running a command: one line for every way it can end early ------------------------------------------

ON_INTERRUPT = {"train": "; rerun with --resume to continue from the last finished epoch",
                "sweep": "; run the same command again to continue", "tune": "; run the same command again to continue"}


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code. A bad argument ends it with one line ``labkit CMD: error:
    ...`` and exit code 2; a run that stops (diverged or dead, out of memory, nothing fits, a broken
    checkpoint, a file that cannot be written) with one line and exit code 1; Ctrl-C with 130. ``labkit
    --debug CMD ...`` lets the error through, traceback and all."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    command = {"train": _train, "sweep": _sweep, "tune": _tune, "find-batch": _find_batch,
               "serve-bench": _serve_bench, "replay": _replay}[args.command]
    if getattr(args, "nproc", None) is not None:
        command = partial(_torchrun, argv=argv)
    if args.debug:
        return command(args)
    try:
        return command(args)
    except KeyboardInterrupt:
        print(f"labkit {args.command}: interrupted{ON_INTERRUPT.get(args.command, '')}", file=sys.stderr)
        return 130
    except BrokenPipeError:       # stdout's reader left (`labkit replay RUN | head`): stop quietly, as the docs say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # so the exit's flush cannot fail again
        return 1
    except Exception as error:
        code, line = _one_line(args.command, error)
        print(line, file=sys.stderr)
        if code == 2:
            raise SystemExit(2) from None           # as argparse ends on a bad argument
        return code


def _one_line(command: str, error: Exception) -> tuple[int, str]:
    """(exit code, the line on stderr) for an error that ended ``command``."""
    from labkit.memory import MemoryCapExceeded, NothingFits
    from labkit.train import BrokenRun, Diverged

    prog = f"labkit {command}"
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (Diverged, BrokenRun, MemoryCapExceeded, NothingFits)):
        return 1, f"{prog}: {text}"
    if isinstance(error, OSError) and error.errno is not None:    # from the system: reading or writing a file
        return 1, f"{prog}: error: {text}"
    if isinstance(error, (ValueError, TypeError, OSError)):       # a check's message: the argument and the fix
        return 2, f"{prog}: error: {text} (see {prog} --help)"
    return 1, (f"{prog}: unexpected error: {type(error).__name__}: {text} (run `labkit --debug {command} ...` "
               f"for the traceback)")


def _strategy_params(args: argparse.Namespace) -> dict:
    """The strategy flags given on the command line, as ``labkit.strategies.build`` takes them."""
    return {name: getattr(args, name) for name in strategy_flags() if hasattr(args, name)}


def _train_config(args: argparse.Namespace):
    """``train``'s ``TrainConfig`` and its strategy, every argument checked before any work."""
    from labkit.strategies import build

    params = _strategy_params(args)
    strategy = build(args.strategy, **params)              # the strategy's parameters first: --out is made last
    return run_config(args, args.strategy, params), strategy


def _train(args: argparse.Namespace) -> int:
    from labkit.plots import plot_history
    from labkit.train import fit

    config, _ = _train_config(args)
    history = fit(config, args.out, resume=args.resume, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":          # a DDP rank other than 0: rank 0 writes and reports
        return 0
    plot_history(history, args.out / "history.png", title=f"{args.strategy} · {args.dataset} · {args.model}")
    last = history.iloc[-1]
    print(f"done: {len(history)} epochs, test acc {last.test_acc:.4f}, final batch {int(last.next_batch)}, "
          f"{last.wall_time_s:.1f} s training; wrote {args.out}/history.csv")
    return 0


def _torchrun(args: argparse.Namespace, argv: list[str]) -> int:
    """``labkit train --nproc N ...``: the same command without ``--nproc``, relaunched on N local processes by
    torchrun (``python -m torch.distributed.run --standalone``); returns its exit code. The arguments are
    checked here first, so a bad one stops the command once, not once per process."""
    from labkit.integrations.distributed import check_split

    check_nproc(args.nproc, args.device)
    check_split(_train_config(args)[1], args.nproc)
    rest = [word for i, word in enumerate(argv) if word != "--nproc" and not word.startswith("--nproc=")
            and not (i > 0 and argv[i - 1] == "--nproc")]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
              "-m", "labkit", *rest]
    return subprocess.run(launch).returncode


def _read_tuned(folder: Path | None) -> dict[str, float] | None:
    """``--tuned``: the peak LR per label that ``labkit tune`` chose (TUNE_DIR/chosen.json)."""
    import json

    if folder is None:
        return None
    chosen = folder / "chosen.json"
    if not chosen.is_file():
        raise FileNotFoundError(f"--tuned {folder}: no chosen.json there; run `labkit tune --out {folder} ...` "
                                f"first")
    try:
        lrs = json.loads(chosen.read_text())
    except ValueError as error:
        raise ValueError(f"--tuned {folder}: chosen.json is not JSON ({error}); rerun `labkit tune --out "
                         f"{folder} ...`") from None
    if not isinstance(lrs, dict) or not all(isinstance(lr, (int, float)) for lr in lrs.values()):
        raise ValueError(f"--tuned {folder}: chosen.json is not {{label: lr}}; rerun `labkit tune --out {folder} ...`")
    return lrs


def _sweep(args: argparse.Namespace) -> int:
    from labkit.experiments import sweep
    from labkit.runtime import atomic_path

    check_runs(args.runs)
    lrs = _read_tuned(args.tuned)
    config = run_config(args)
    table = sweep(config, args.runs, args.seeds, args.out, progress=not args.no_progress, lrs=lrs,
                  stop_after=args.stop_after, restart_broken=args.restart_broken)
    with atomic_path(args.out / "summary.csv") as partial:
        table.to_csv(partial)
    print(table.round(4).to_string())
    return 0


def _tune(args: argparse.Namespace) -> int:
    from labkit.experiments import chosen_lrs, log_grid, tune

    check_runs(args.runs)
    lrs = args.lrs or log_grid(args.lr)
    if len(lrs) < 2:
        raise ValueError(f"--lrs {' '.join(map(str, lrs))}: give at least two learning rates, all > 0")
    if args.widen < 0:
        raise ValueError(f"--widen {args.widen}: give a number of extra rounds ≥ 0")
    config = run_config(args)
    table = tune(config, args.runs, lrs, args.out, validation=args.validation, jobs=args.jobs,
                 progress=not args.no_progress, stop_after=args.stop_after, restart_broken=args.restart_broken,
                 widen=args.widen)
    print(table.round(4).to_string(index=False))
    print(f"chosen (best final validation accuracy): {chosen_lrs(table)}; wrote {args.out}/tune.csv, chosen.json")
    return 0


def _find_batch(args: argparse.Namespace) -> int:
    import logging

    from labkit.finder import find_batch_size
    from labkit.runtime import pick_device

    check_numbers(args)
    if args.max_batch is not None and args.min_batch > args.max_batch:
        raise ValueError(f"--min-batch {args.min_batch} is larger than --max-batch {args.max_batch}: lower "
                         f"--min-batch or raise --max-batch")
    pick_device(args.device)
    if args.out is not None:
        check_out(args.out)
    progress = logging.StreamHandler(sys.stderr)          # the memory search's "batch 512 fits ..." lines
    logger = logging.getLogger("labkit")
    logger.addHandler(progress)
    logger.setLevel(logging.INFO)
    try:
        rec = find_batch_size(args.model, args.dataset, device=args.device, lr=args.lr, lr_rule=args.lr_rule,
                              base_batch=args.base_batch, min_batch=args.min_batch, max_batch=args.max_batch,
                              gns_steps=args.gns_steps, gns_every=args.gns_every, sizes=args.sizes,
                              memory_cap_bytes=None if args.memory_cap is None else args.memory_cap * 2**30,
                              quick=True if args.quick else None, seed=args.seed, data_root=args.data_root)
    finally:
        logger.removeHandler(progress)
    print(rec.evidence.round(4).to_string(index=False))
    print(f"recommended: {rec}")
    if args.out is not None:
        print(f"wrote {', '.join(str(path) for path in rec.save(args.out))}")
    return 0


def _serve_bench(args: argparse.Namespace) -> int:
    import torch

    from labkit.runtime import pick_device, quick_mode, save_table
    from labkit.serving.bench import FULL, QUICK, serve_bench

    check_numbers(args)
    device = pick_device(args.device)
    check_out(args.out, file=True)
    defaults = QUICK if args.quick or quick_mode() else FULL
    given = {name: getattr(args, name) for name in defaults if getattr(args, name) is not None}
    settings = defaults | given
    if device.type == "cpu":
        # the worker shares the cores with the clients: intra-op threads would wait for descheduled peers
        # (batches of x*2 took 12 ms instead of 0.2 ms on a 2-core machine)
        torch.set_num_threads(1)
    table, meta = serve_bench(settings["model"], device=device, max_batch=args.max_batch, windows=args.windows,
                              target_p99_ms=args.target_p99_ms, load=settings["load"], rates=args.rates,
                              duration_s=settings["duration"], clients=args.clients, burst_requests=settings["burst"],
                              seed=args.seed, generators=settings["generators"],
                              switch_interval_ms=args.switch_interval_ms)
    print(table[["rate", "generator", "mode", "window_ms", "throughput", "p50_ms", "p99_ms", "mean_batch",
                 "speedup", "p99_bound_ms", "p99_ok", "meets_target", "p99_lag_ms"]].round(3).to_string(index=False))
    save_table(table, args.out, device, **meta)
    return 0


REASON_WIDTH = 100   # characters of a reason shown in the table (--csv keeps them whole)


def _replay(args: argparse.Namespace) -> int:
    """Exit code 0 when every replayed decision matches the log, 1 when some differ."""
    from labkit.replay import replay, verdict
    from labkit.runtime import atomic_path

    if args.csv is not None:
        check_out(args.csv, file=True)
    table = replay(args.run)
    signals = [name for name in table.attrs["uses"]        # epoch is a column already; a signal never passed: none
               if name != "epoch" and table[name].notna().any()]
    shown = table[["epoch", "batch_size", *signals, "next_batch", "replayed", "reason"]].rename(
        columns={"batch_size": "B", "next_batch": "next (log)"})
    shown["B"] = shown["B"].round().astype(int)
    if not table["same"].all():
        shown.insert(shown.columns.get_loc("replayed") + 1, "same", table["same"].map({True: "", False: "DIFFERS"}))
    reasons = [r if len(r) <= REASON_WIDTH else r[:REASON_WIDTH - 1] + "…" for r in shown["reason"]]
    width = max([len("reason"), *map(len, reasons)])
    shown["reason"] = [r.ljust(width) for r in reasons]
    shown = shown.rename(columns={"reason": "reason".ljust(width)})       # the header left-aligned with the text
    print("\n".join(line.rstrip() for line in shown.to_string(index=False, float_format="{:.4g}".format).splitlines()))
    if args.csv is not None:
        with atomic_path(args.csv) as partial:
            table.to_csv(partial, index=False)
        print(f"wrote {args.csv}")
    differ = table[~table["same"]]
    if not differ.empty:
        first = differ.iloc[0]
        print(f"epoch {first.epoch}: the log chose {first.next_batch} ({first.reason}); the replay chose "
              f"{first.replayed} ({first.replayed_reason})")
    print(verdict(table))
    return 0 if table["same"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
