"""Execute chapter notebooks in place and save them ready to commit.

    .venv/bin/python notebooks/execute.py                          # every chapter (quick mode), then the status page
    .venv/bin/python notebooks/execute.py notebooks/schedules.ipynb
    .venv/bin/python notebooks/execute.py --full notebooks/x.ipynb # without LABKIT_QUICK (full size, for a GPU)

Each notebook runs through ``jupyter nbconvert --to notebook --execute --inplace``; afterwards the widget
state (notebook metadata) and the live widget views (``application/vnd.jupyter.widget-view+json``
outputs) are dropped, since without a kernel they cannot be shown. (nbclient's
``store_widget_state=False`` would be the direct way, but its Output-widget hook then fails.) What stays
is each panel's static ``text/html`` version: it is what the book shows, and
what Jupyter shows until the cell is run again (then the panel is live). Widget state would also make
myst-nb load the widget manager from a CDN.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STATUS = REPO / "book" / "status.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def chapters() -> list[Path]:
    """The chapter notebooks, in the order of ``_toc.yml``."""
    order = [line.split("file:")[1].strip() for line in (REPO / "_toc.yml").read_text().splitlines()
             if "file:" in line and "notebooks/" in line]
    listed = [REPO / f"{name}.ipynb" for name in order if (REPO / f"{name}.ipynb").exists()]
    others = sorted(set(HERE.glob("*.ipynb")) - set(listed))
    return listed + others


def execute(path: Path, quick: bool, timeout: int = 600) -> float:
    env = dict(os.environ)
    if quick:
        env["LABKIT_QUICK"] = "1"
    else:
        env.pop("LABKIT_QUICK", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # labkit, installed or not
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                    f"--ExecutePreprocessor.timeout={timeout}",
                    str(path)], check=True, env=env, cwd=path.parent)
    seconds = time.perf_counter() - start
    strip_widget_views(path)
    return seconds


def strip_widget_views(path: Path) -> None:
    """Drop widget state and widget-view outputs; keep every other output as it is."""
    nb = json.loads(path.read_text())
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET_VIEW, None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter, then the status page")
    parser.add_argument("--full", action="store_true", help="run without LABKIT_QUICK (full size)")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or chapters() + [STATUS]
    for path in paths:
        seconds = execute(path, quick=not args.full)
        print(f"{path.relative_to(REPO)}: {seconds:.1f} s", flush=True)
    if args.notebooks and STATUS not in paths:
        print(f"re-run {STATUS.relative_to(REPO)} too, so the status page lists the new run", flush=True)


if __name__ == "__main__":
    main()
