"""A run folder: ``config.json`` written and compared before a resume, ``checkpoint.pt`` saved and restored,
``history.csv`` and ``decisions.csv`` written, and ``BrokenRun`` for a folder whose files cannot be read.

Every file is replaced whole (``labkit.runtime.atomic_path``), so a ``kill -9`` leaves the previous version,
never half of one. A resume first compares the saved config with the requested one: anything but where the
run happens (``RESUME_MAY_DIFFER``) must match, epochs included, since the LR schedule spans them. Whatever
cannot be read back (cut short, garbage, another run's file) is one ``BrokenRun`` naming the file.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
import torch

from labkit.runtime import atomic_path, provenance


class BrokenRun(RuntimeError):
    """A run folder whose files cannot be read back: a checkpoint, history or config cut short, garbage, or
    saved by another run. ``path`` is the file (None if not given)."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else Path(path)

    @classmethod
    def of(cls, path: str | Path, what: str, problem: str) -> "BrokenRun":
        """'<path> is not a readable <what> (<problem>)', and what to do about it."""
        path = Path(path)
        return cls(f"{path} is not a readable {what} ({problem}): the run in {path.parent} is broken; delete that "
                   f"folder to train it again, or rerun the sweep with --restart-broken (restart_broken=True), "
                   f"which sets broken runs aside and trains them again", path)


# Fields that may differ when a run resumes: where it runs and how it is evaluated, not what it trains.
RESUME_MAY_DIFFER = ("device", "compile", "data_root", "eval_batch")


def check_resumable(out: Path, config) -> None:
    """Refuse to resume ``out`` with another config: a ``ValueError`` naming every field that differs (both
    values). Epochs count too: the LR schedule is spread over them, so more epochs change the earlier ones.
    An unreadable ``config.json`` (or a checkpoint without one) is a ``BrokenRun``."""
    path = out / "config.json"
    if not path.exists():
        if (out / "checkpoint.pt").exists():
            raise BrokenRun.of(path, "config", "it is missing beside checkpoint.pt")
        return
    try:
        saved = json.loads(path.read_text())["config"]
        if not isinstance(saved, dict):
            raise TypeError(f"its 'config' is a {type(saved).__name__}, not a dict")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise BrokenRun.of(path, "config", _problem(error)) from None
    wanted = json.loads(json.dumps(asdict(config)))           # as JSON sees it: milestone keys become text
    defaults = json.loads(json.dumps(asdict(type(config)())))
    differ = [name for name, value in wanted.items() if name not in RESUME_MAY_DIFFER
              and saved.get(name, defaults[name]) != value
              and not (name == "quick" and saved.get(name) is None)]   # older runs saved quick unresolved
    if differ:
        pairs = "; ".join(f"{name}={saved.get(name, defaults[name])!r} there, {wanted[name]!r} here"
                          for name in differ)
        raise ValueError(f"cannot resume {out}: its config.json differs in {', '.join(differ)} ({pairs}); "
                         f"resume with the same settings, or train into another folder")


@dataclass(frozen=True)
class Progress:
    """How far a run has come by the end of its last finished epoch; ``checkpoint.pt`` keeps it as a dict
    under ``counters``."""
    epoch: int = 0          # epochs finished
    step: int = 0           # optimizer steps taken
    samples: int = 0        # training examples seen
    wall: float = 0.0       # training seconds (evaluation excluded)
    energy: float = 0.0     # joules the GPU drew while training (nan without a GPU or NVML)

    @classmethod
    def of(cls, counters) -> "Progress":
        """Read back a checkpoint's ``counters``: a dict of these fields, or the list [epoch, step, samples,
        wall, energy] that checkpoints held before 2026-12."""
        names = [f.name for f in fields(cls)]
        if isinstance(counters, (list, tuple)) and len(counters) == len(names):
            counters = dict(zip(names, counters))
        if not isinstance(counters, dict) or sorted(counters) != sorted(names):
            raise ValueError(f"its counters {counters!r} are not {names}")
        return cls(**counters)


CHECKPOINT_KEYS = ("model", "optimizer", "strategy", "batcher", "gns", "rng", "history", "counters")


def save_checkpoint(out: Path, progress: Progress, **state) -> None:
    """``checkpoint.pt``: a run after an epoch, its ``progress`` and the other ``CHECKPOINT_KEYS`` (state
    dicts, the RNG state, the history rows), written atomically (a kill leaves the previous one whole)."""
    state = {**state, "counters": asdict(progress)}
    if sorted(state) != sorted(CHECKPOINT_KEYS):
        raise ValueError(f"a checkpoint holds {list(CHECKPOINT_KEYS)}; got {sorted(state)}")
    with atomic_path(out / "checkpoint.pt") as partial:
        torch.save(state, partial)


def restore(path: Path, device: torch.device, config, **objects) -> tuple[list[dict], Progress]:
    """Load ``checkpoint.pt`` into the model, optimizer, strategy, batcher and GNS tracker; return the history
    rows and the ``Progress``. Anything unreadable is a ``BrokenRun``."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(state, dict) or sorted(state) != sorted(CHECKPOINT_KEYS):
            raise ValueError(f"it holds {type(state).__name__} {sorted(state) if isinstance(state, dict) else ''}, "
                             f"not a labkit checkpoint with keys {list(CHECKPOINT_KEYS)}")
        for name, obj in objects.items():
            if obj is not None:
                obj.load_state_dict(state[name])
        torch.set_rng_state(state["rng"].cpu())
        rows, progress = state["history"], Progress.of(state["counters"])
        if not isinstance(rows, list) or progress.epoch != len(rows) or not 0 < progress.epoch <= config.epochs:
            raise ValueError(f"its counters {progress} do not match its {len(rows)} history rows and "
                             f"{config.epochs} epochs")
    except Exception as error:      # whatever the cause (EOF, unpickling, foreign weights), the file is unusable
        raise BrokenRun.of(path, "checkpoint", _problem(error)) from error
    return rows, progress


def resume_or_start(out: Path | None, resume: bool, config, device: torch.device, *, writer: bool = True,
                    **objects) -> tuple[list[dict], Progress]:
    """The history rows and the ``Progress`` a run starts from: with ``resume``, those of ``out``'s checkpoint,
    whose states are loaded into ``objects`` (see ``restore``); else none. With ``out`` and ``writer``, writes
    ``config.json`` (under DDP every rank restores the checkpoint; only rank 0 is the writer)."""
    rows, progress = [], Progress()
    if out is None:
        return rows, progress
    if resume and (out / "checkpoint.pt").exists():
        rows, progress = restore(out / "checkpoint.pt", device, config, **objects)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, config, device)
    return rows, progress


def save_history(out: Path | None, rows: list[dict], strategy=None) -> pd.DataFrame:
    """The history as a table; with ``out``, written as ``history.csv`` (one row per epoch) beside the
    strategy's decision log, ``decisions.csv``."""
    history = pd.DataFrame(rows)
    if out is not None:
        with atomic_path(out / "history.csv") as partial:
            history.to_csv(partial, index=False)
        if strategy is not None:
            with atomic_path(out / "decisions.csv") as partial:
                pd.DataFrame([asdict(d) for d in strategy.history], columns=["step", "old", "new", "reason"]
                             ).to_csv(partial, index=False)
    return history


def _problem(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def write_config(out: Path, config, device: torch.device) -> None:
    """``config.json``: the run's configuration (a ``TrainConfig``) and where it ran, written atomically."""
    record = {"config": asdict(config), "provenance": provenance(device)}
    with atomic_path(out / "config.json") as partial:
        partial.write_text(json.dumps(record, indent=2) + "\n")
