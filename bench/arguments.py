"""The command line every benchmark shares: ``--device`` (auto: CUDA when present), ``--out`` (default
``runs/<name>.csv``; commit a GPU table to ``results/`` yourself) and ``--quick`` (a CPU smoke run in
seconds). A benchmark adds its own arguments to the parser ``bench_parser`` returns.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def bench_parser(doc: str, name: str, quick: str = "tiny sizes for a CPU smoke run") -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc`` with the shared arguments; ``quick`` is the
    help of ``--quick`` (what the smoke run shrinks)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: cuda when present)")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=Path("runs") / f"{name}.csv", help="the CSV to write")
    return parser
