"""Where code runs and how big it runs: quick mode, the device, and the provenance of a result.

``LABKIT_QUICK=1`` (or ``--quick``) shrinks data and epochs so notebooks and examples take seconds on a
CPU; without it, a GPU run uses the full sizes.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

# The checkout this copy of labkit runs from: for its git commit and the committed results/ the chapters read.
# Never for data, which an installed copy would then look for beside site-packages (see labkit.data.data_root).
REPO = Path(__file__).resolve().parents[1]


def quick_mode() -> bool:
    """True when ``LABKIT_QUICK`` is set to anything but '', '0' or 'false'."""
    return os.environ.get("LABKIT_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def pick_device(requested: str | None = None):
    """``torch.device``: the one asked for ('cpu', 'cuda', 'cuda:N'), else CUDA when present, else CPU
    (``None``, '' or 'auto'). Anything else, or a CUDA device this machine lacks, is a ``ValueError``."""
    import torch

    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(requested, torch.device):
        requested = str(requested)
    if not isinstance(requested, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", requested):
        raise ValueError(f"device={requested!r} is not allowed: expected 'cpu', 'cuda', 'cuda:N' or 'auto' "
                         f"(leave it out to pick automatically)")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} was asked for but CUDA is not available here: "
                         f"use device='cpu' or leave it out to pick automatically")
    if device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"device={requested!r} is not here: this machine's CUDA devices are cuda:0"
                         f"{f' to cuda:{count - 1}' if count > 1 else ''}")
    return device


def git_commit() -> str:
    """``$LABKIT_COMMIT`` if set (a copy without .git, e.g. on a GPU machine), else the repository's HEAD
    commit (with '+dirty' if tracked files changed), else 'unknown'."""
    if os.environ.get("LABKIT_COMMIT"):
        return os.environ["LABKIT_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(device=None) -> dict:
    """Where and when a result was produced: device name, torch version, git commit, date, host."""
    import torch

    device = pick_device(None if device is None else str(device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


@contextmanager
def atomic_path(path):
    """Write to a temporary file beside ``path`` and move it into place when the block ends without an error
    (``os.replace``: a reader, or a rerun after a kill, sees the old file or the new one, never half of one).

        >>> with atomic_path(out / "history.csv") as tmp:
        ...     table.to_csv(tmp, index=False)
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def save_table(table, path, device=None, **meta) -> Path:
    """Write a results table as CSV, each row carrying ``provenance(device)``, ``meta`` and the command line
    that produced it (benchmarks use this so a CSV says where and how it was made)."""
    import sys

    script, args = Path(sys.argv[0]), sys.argv[1:]
    if script.suffix == ".py" and REPO in script.resolve().parents:     # ran as `python -m package.module`
        script = "-m " + ".".join(script.resolve().relative_to(REPO).with_suffix("").parts)
    command = " ".join([Path(sys.executable).name, str(script), *args])
    table = table.assign(**provenance(device), **meta, command=command)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        table.to_csv(partial, index=False)
    print(f"wrote {path}")
    return path
