"""The command line's arguments: the parser of ``labkit train | sweep | tune | find-batch | serve-bench | replay``, the
strategy flags, and the checks that run before any work (each a ``ValueError`` naming the flag, the bad value
and what is allowed). ``labkit.cli`` runs the commands.
"""
from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path
from typing import Any, Callable


def _number(text: str) -> int | float:
    """'1024' → 1024, '0.8' → 0.8: for a flag that is a count in one strategy and a share in another
    (``--target``: a batch size for progressive, a memory share for memory)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


KINDS = {"int": int, "float": float, "str": str}


def strategy_flags() -> dict[str, tuple[Callable[[str], Any], str]]:
    """flag → (parser, help) for every parameter of every registered strategy, read from their ``Param``
    declarations and constructor annotations: one flag per name, its help grouped by the strategies that
    share a text ('linear: …; gns, memory: …'), a number parser where strategies disagree on int/float."""
    from labkit.strategies import STRATEGIES, Strategy

    kinds: dict[str, set] = {}
    helps: dict[str, dict[str, list[str]]] = {}
    parsers: dict[str, Callable] = {}
    for name, cls in STRATEGIES.items():
        hints = {p.name: p.annotation for p in _constructor_parameters(cls)}
        for param in cls.parameters():
            declared = cls.param(param)
            if declared.parse is not None:
                parsers[param] = _own_message(declared.parse)
            hint = hints.get(param, "")
            kind = re.match(r"\s*(int|float|str)\b", hint.__name__ if isinstance(hint, type) else str(hint))
            kinds.setdefault(param, set()).add(KINDS[kind.group(1)] if kind else str)
            helps.setdefault(param, {}).setdefault(declared.help, []).append(name)
    flags = {}
    for param, texts in helps.items():
        parse = parsers.get(param) or (next(iter(kinds[param])) if len(kinds[param]) == 1 else _number)
        shared = len(texts) == 1 and Strategy.param(param) is not None
        text = next(iter(texts)) if shared else "; ".join(f"{', '.join(names)}: {t}" for t, names in texts.items())
        flags[param] = (parse, text)
    return flags


def _own_message(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` whose ValueError message argparse prints as it is (not 'invalid parse value')."""
    def parse_flag(text: str):
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse_flag


def _constructor_parameters(cls) -> list[inspect.Parameter]:
    """The keyword parameters of ``cls`` and its bases' constructors, nearest first."""
    return [p for klass in cls.__mro__ if "__init__" in vars(klass) and klass is not object
            for p in inspect.signature(klass.__init__).parameters.values()]


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits with code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> Parser:
    from labkit.serving.load import GENERATORS
    from labkit.strategies import LR_RULES, STRATEGIES

    parser = Parser(prog="labkit", description="Adaptive batch sizes: train, compare, measure.",
                    epilog="A bad argument ends a command with one line and exit code 2; a run that stops "
                           "(diverged, out of memory, a broken checkpoint, a failed write) with one line and "
                           "exit code 1.")
    parser.add_argument("--debug", action="store_true", help="show an error's traceback instead of one line")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train = commands.add_parser("train", help="train one model with one batch-size strategy",
                                description="Train a model with a batch-size strategy; writes history.csv, "
                                            "config.json and history.png to --out.")
    _add_run_arguments(train)
    train.add_argument("--strategy", default="fixed", choices=list(STRATEGIES))
    train.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    train.add_argument("--nproc", type=int, metavar="N", help="train on N local processes under DDP, relaunched "
                       "with torchrun (CPU: gloo; CUDA: nccl, one GPU each); strategy sizes are global batches, "
                       "so give --multiple-of N")
    group = train.add_argument_group("strategy parameters (passed on only when given)")
    for name, (kind, text) in strategy_flags().items():
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=text, default=argparse.SUPPRESS)

    sweep = commands.add_parser("sweep", help="train under several strategies and seeds, then compare",
                                description="Runs each --runs spec for each seed into OUT/<label>/seed<s>/, "
                                            "skipping finished runs (a sweep resumes), and writes OUT/summary.csv.")
    _add_run_arguments(sweep)
    _add_many_runs_arguments(sweep, "run")
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0])
    sweep.add_argument("--tuned", type=Path, metavar="TUNE_DIR", help="train each run at the peak LR that "
                       "`labkit tune` chose for its label (TUNE_DIR/chosen.json); other labels use --lr")

    tune = commands.add_parser("tune", help="pick the peak LR per run on a validation split held out of train",
                               description="Trains each --runs spec at each LR of a log-spaced grid with the "
                                           "same schedule and epochs, scored on a share of the training set "
                                           "held out (--validation; the test split is never evaluated). Writes "
                                           "OUT/tune.csv and OUT/chosen.json, which `labkit sweep --tuned OUT` "
                                           "reads.")
    _add_run_arguments(tune)
    _add_many_runs_arguments(tune, "trial")
    tune.set_defaults(validation=0.1)
    tune.add_argument("--lrs", nargs="+", type=float, help="the LR grid (default: 5 values ×2 apart around --lr)")
    tune.add_argument("--jobs", type=int, default=1, help="trials trained at once in separate processes (their "
                      "times are then not comparable; tuning reports none; --stop-after needs --jobs 1)")
    tune.add_argument("--widen", type=int, default=0, metavar="ROUNDS", help="up to ROUNDS extra rounds that each "
                      "add one LR past a run's grid wherever its best LR is the smallest or largest tried")

    find = commands.add_parser("find-batch", help="recommend a batch size and learning rate before training",
                               description="Finds the largest batch that fits, the gradient noise scale B_simple "
                                           "over a short stretch of training and samples/s at a few sizes; "
                                           "recommends min(B_simple, largest that fits) and the lr scaled to it. "
                                           "With --out: recommendation.json, evidence.csv, finder.png.")
    find.add_argument("--dataset", default="mnist", help="mnist | fashion-mnist | cifar10 | mnist1d | digits")
    find.add_argument("--model", default="mlp", help="mlp | cnn | resnet | conv1d")
    find.add_argument("--lr", type=float, default=0.05, help="learning rate tuned for --base-batch")
    find.add_argument("--lr-rule", default="sqrt", choices=LR_RULES, help="how lr follows the batch size")
    find.add_argument("--base-batch", type=int, default=128, help="batch size --lr was tuned for; B_simple is "
                                                                  "measured there")
    find.add_argument("--min-batch", type=int, default=16, help="smallest batch recommended")
    find.add_argument("--max-batch", type=int, help="largest batch tried (default: the training set)")
    find.add_argument("--gns-steps", type=int, help="training steps to measure B_simple over (default 400, quick 30)")
    find.add_argument("--gns-every", type=int, help="a B_simple reading every N of them (default 4, quick 2)")
    find.add_argument("--sizes", type=int, nargs="+", help="batch sizes to time (default: x4 steps up to the max)")
    find.add_argument("--memory-cap", type=float, metavar="GIB", help="treat a step needing more GiB as out of "
                                                                      "memory (default: none on CUDA, 1 on CPU, "
                                                                      "0.25 quick)")
    find.add_argument("--seed", type=int, default=0)
    find.add_argument("--device", help="cpu | cuda | cuda:N | auto (default: cuda when present)")
    find.add_argument("--quick", action="store_true", help="small data subset and budgets (as LABKIT_QUICK=1)")
    find.add_argument("--data", dest="data_root", help="dataset root (default: $LABKIT_DATA, else ~/.cache/labkit)")
    find.add_argument("--out", type=Path, help="folder for recommendation.json, evidence.csv, finder.png")

    serve = commands.add_parser("serve-bench", help="time-window inference batching vs one-by-one, under load",
                                description="Serves a model on MNIST shapes one request at a time and with "
                                            "time-window batching, under Poisson load at several rates; writes "
                                            "throughput, p50/p99 latency and the p99 bound per run to --out.")
    serve.add_argument("--model", help="mlp | cnn | resnet (default cnn; quick: mlp)")
    serve.add_argument("--max-batch", type=int, default=64)
    serve.add_argument("--windows", type=float, nargs="+", default=[2.0, 5.0, 10.0], help="fixed windows, ms")
    serve.add_argument("--target-p99-ms", type=float, default=10.0, help="the window controller's target")
    serve.add_argument("--load", type=float, nargs="+", help="offered rates as multiples of the measured "
                                                              "one-by-one capacity (default 0.5 2 8; quick: 0.5 3)")
    serve.add_argument("--rates", type=float, nargs="+", help="offered rates in requests/s (instead of --load)")
    serve.add_argument("--duration", type=float, help="seconds of arrivals per run (default 2; quick 0.3)")
    serve.add_argument("--clients", type=int, default=2, help="client threads or processes sending requests")
    serve.add_argument("--generators", nargs="+", choices=GENERATORS,
                       help="clients as processes (the server's process only receives them) or as threads of "
                            "the server's process, competing with it for the GIL (default process; quick: threads)")
    serve.add_argument("--switch-interval-ms", type=float, help="the interpreter's GIL switch interval "
                                                                "(default: Python's, 5 ms)")
    serve.add_argument("--burst", type=int, help="requests in the capacity measurement (default 2000; quick 500)")
    serve.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    serve.add_argument("--device", help="cpu | cuda | cuda:N | auto (default: cuda when present)")
    serve.add_argument("--quick", action="store_true", help="short runs of an mlp, threads (as LABKIT_QUICK=1)")
    serve.add_argument("--out", type=Path, default=Path("runs") / "bench_serving.csv",
                       help="CSV to write (default under runs/: never over a committed result)")

    replay = commands.add_parser("replay", help="show why the batch moved in a finished run, replayed from its log",
                                 description="Builds the run's strategy afresh from RUN/config.json and feeds it "
                                             "each epoch's signals from RUN/history.csv (loss, entropy, epoch, "
                                             "step_time = epoch_time_s / the epoch's steps, gns, memory); prints "
                                             "each decision beside the logged one and its reason. Exit code 0 "
                                             "when every decision matches the log, 1 when some differ. Runs "
                                             "with --decide-every step cannot be replayed from per-epoch rows.")
    replay.add_argument("run", type=Path, metavar="RUN", help="a run folder written by `labkit train` or a sweep "
                                                              "(config.json, history.csv)")
    replay.add_argument("--csv", type=Path, metavar="OUT", help="also write the whole table (every signal, the "
                                                                "full reasons) to this CSV file")
    return parser


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a training run shared by ``train``, ``sweep`` and ``tune``; their defaults are
    ``TrainConfig``'s own."""
    from dataclasses import fields

    from labkit.lr_schedules import LR_SCHEDULES
    from labkit.strategies import LR_RULES_WITH_ADASCALE
    from labkit.train import DECIDE, OPTIMIZERS, TrainConfig

    d = {f.name: f.default for f in fields(TrainConfig)}
    parser.add_argument("--dataset", default=d["dataset"], help="mnist | fashion-mnist | cifar10 | mnist1d | digits")
    parser.add_argument("--model", default=d["model"], help="mlp | cnn | resnet | conv1d")
    parser.add_argument("--epochs", type=int, default=d["epochs"])
    parser.add_argument("--lr", type=float, default=d["lr"], help="learning rate at the base batch size")
    parser.add_argument("--lr-rule", default=d["lr_rule"], choices=LR_RULES_WITH_ADASCALE,
                        help="how lr follows the batch B (lr tuned at B0): ×B/B0 (linear), ×√(B/B0) (sqrt), ×1 "
                             "(none), or AdaScale's gain (N+B0)·B/((N+B)·B0), N the gradient noise scale, tracked "
                             "for it (adascale)")
    parser.add_argument("--lr-schedule", default=d["lr_schedule"], choices=LR_SCHEDULES,
                        help="peak lr × schedule(share of training samples seen): warm-up then linear decay to "
                             "zero (default), cosine, step (×0.1 at 50%% and 75%%), onecycle, or constant")
    parser.add_argument("--lr-warmup", type=float, metavar="EPOCHS",
                        help="epochs of linear warm-up (default 1, at most a fifth of the run; constant: 0)")
    parser.add_argument("--label-smoothing", type=float, default=d["label_smoothing"], help="ε of the training loss")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="random crop (4 px, reflect) and flip on the device (default: on for cifar10)")
    parser.add_argument("--validation", type=float, default=d["validation"],
                        help="share of the training set held out and evaluated instead of the test split "
                             "(tune: default 0.1; train and sweep: default 0, the test split)")
    parser.add_argument("--base-batch", type=int, help="batch size --lr was tuned for (default: b_init)")
    parser.add_argument("--optimizer", default=d["optimizer"], choices=OPTIMIZERS)
    parser.add_argument("--decide-every", default=d["decide_every"], choices=DECIDE)
    parser.add_argument("--gns-every", type=int, default=d["gns_every"],
                        help="measure the gradient noise scale every N steps (0: off, unless the gns strategy or "
                             "--lr-rule adascale needs it: GNSTracker's default interval)")
    parser.add_argument("--memory-budget-mb", type=float, help="memory the memory signal is measured against "
                        "(CUDA: default the device's memory, a smaller budget is enforced; CPU: estimated)")
    parser.add_argument("--curriculum", help="easiest data first, by per-example loss: 'self' (the model being "
                        "trained, each epoch) or a run folder holding a reference model's checkpoint.pt")
    parser.add_argument("--curriculum-c0", type=float, default=d["curriculum_c0"],
                        help="share of the data in the first epoch")
    parser.add_argument("--curriculum-epochs", type=int, default=d["curriculum_epochs"],
                        help="epoch from which all data is used")
    parser.add_argument("--seed", type=int, default=d["seed"])
    parser.add_argument("--eval-batch", type=int, default=d["eval_batch"], help="batch size of evaluation")
    parser.add_argument("--device", help="cpu | cuda | cuda:N | auto (default: cuda when present)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic batch dim)")
    parser.add_argument("--quick", action="store_true", help="small data subset (as LABKIT_QUICK=1)")
    parser.add_argument("--data", dest="data_root", help="dataset root (default: $LABKIT_DATA, else ~/.cache/labkit)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_many_runs_arguments(parser: argparse.ArgumentParser, unit: str) -> None:
    """--runs and --stop-after, shared by ``sweep`` and ``tune``."""
    parser.add_argument("--runs", nargs="+", required=True, metavar="SPEC",
                        help="[LABEL=]STRATEGY[:KEY=VALUE,...], e.g. fixed:b_init=128 loss:delta=ema,alpha=0.3")
    parser.add_argument("--stop-after", type=float, metavar="SECONDS", help=f"start no new {unit} after this "
                        f"long (rerun the same command to continue)")
    parser.add_argument("--restart-broken", action="store_true", help=f"set aside a {unit} whose checkpoint or "
                        f"history cannot be read back (cut short, garbage) and train it again, instead of stopping")


def run_config(args: argparse.Namespace, strategy: str = "fixed", params: dict | None = None):
    """The ``TrainConfig`` of ``train``, ``sweep`` and ``tune``, every argument checked before any work: names,
    numbers, the device, and last ``--out`` (created here, so a folder that cannot be made stops at once)."""
    from labkit.checks import check_choice
    from labkit.data import DATASETS
    from labkit.models import MODELS
    from labkit.runtime import pick_device
    from labkit.train import TrainConfig

    check_choice("--dataset", args.dataset, DATASETS)
    check_choice("--model", args.model, MODELS)
    check_numbers(args)
    config = TrainConfig(dataset=args.dataset, model=args.model, strategy=strategy, strategy_params=params or {},
                         epochs=args.epochs, lr=args.lr, lr_rule=args.lr_rule, lr_schedule=args.lr_schedule,
                         lr_warmup=args.lr_warmup, label_smoothing=args.label_smoothing, augment=args.augment,
                         validation=args.validation, base_batch=args.base_batch, optimizer=args.optimizer,
                         decide_every=args.decide_every, gns_every=args.gns_every,
                         memory_budget_mb=args.memory_budget_mb, curriculum=args.curriculum,
                         curriculum_c0=args.curriculum_c0, curriculum_epochs=args.curriculum_epochs,
                         seed=args.seed, device=args.device, compile=args.compile,
                         quick=True if args.quick else None, data_root=args.data_root,
                         eval_batch=args.eval_batch).checked()
    pick_device(args.device)
    check_out(args.out)
    return config


# -- checks before any work: each raises ValueError naming the flag, the bad value and what is allowed ----

CLI_NUMBERS = {   # flags the package does not check itself: dest → (check, bounds); a list is checked per entry
    "base_batch": ("int", {"low": 1}),
    "min_batch": ("int", {"low": 1}),
    "max_batch": ("int", {"low": 1}),
    "memory_cap": ("float", {"low": 0.0, "low_open": True}),
    "eval_batch": ("int", {"low": 1}),
    "seed": ("int", {"low": 0}),
    "seeds": ("int", {"low": 0}),
    "stop_after": ("float", {"low": 0.0}),
    "lrs": ("float", {"low": 0.0, "low_open": True}),
    "jobs": ("int", {"low": 1}),
    "duration": ("float", {"low": 0.0, "low_open": True}),
    "clients": ("int", {"low": 1}),
    "burst": ("int", {"low": 1}),
    "target_p99_ms": ("float", {"low": 0.0, "low_open": True}),
}


def check_numbers(args: argparse.Namespace) -> None:
    from labkit.checks import check_float, check_int

    for name, (kind, bounds) in CLI_NUMBERS.items():
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                (check_int if kind == "int" else check_float)("--" + name.replace("_", "-"), value, **bounds)


def check_out(out: Path, *, file: bool = False) -> None:
    """``--out``: a folder (``file``: a file's folder) that exists or can be made here, and can be written."""
    import os

    if file and out.is_dir():
        raise ValueError(f"--out {out} is a folder: give a file name, e.g. {out / 'bench_serving.csv'}")
    if not file and out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder (it is made if missing)")
    folder = out.parent if file else out
    in_the_way = next((path for path in folder.parents if path.exists() and not path.is_dir()), None)
    if in_the_way is not None or (file and folder.exists() and not folder.is_dir()):
        raise ValueError(f"--out {out}: {in_the_way or folder} is a file, not a folder: choose another place")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--out {out}: cannot make the folder {folder} ({error.strerror or error}): "
                         f"choose another place") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: the folder {folder} is not writable: choose another place")


def check_nproc(nproc: int, device: str | None) -> None:
    """``--nproc``: at least 1, and at most the GPUs (on CUDA, where one process takes one GPU) or the
    CPU cores of this machine."""
    import os

    from labkit.runtime import pick_device

    if nproc < 1:
        raise ValueError(f"--nproc {nproc}: give 1 or more processes")
    if pick_device(device).type == "cuda":
        import torch

        have, what = torch.cuda.device_count(), "GPUs"
    else:
        have, what = os.cpu_count() or 1, "CPU cores"
    if nproc > have:
        raise ValueError(f"--nproc {nproc} is more than the {have} {what} here: give --nproc {have} or fewer")


def check_runs(specs: list[str]) -> None:
    """Build every run spec once before any work, so a typo stops the command at once."""
    from labkit.experiments import parse_run
    from labkit.strategies import build

    for spec in specs:
        try:
            _, name, params = parse_run(spec)
            build(name, **params)
        except (TypeError, ValueError) as error:                     # name the spec if the message does not
            raise ValueError(str(error) if spec in str(error) else f"--runs {spec!r}: {error}") from None
