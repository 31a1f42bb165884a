"""Student copies of the chapters: every solution replaced by a stub, every output cleared.

    python -m labkit.student _build/student                          # every chapter that has exercises
    python -m labkit.student _build/student notebooks/schedules.ipynb
    make student                                                     # the first, into _build/student

A copy that is already in the folder is kept (it may hold a student's work); ``--force`` (``make student
FORCE=1``) writes it again.

The chapters are the instructor copy: each exercise is followed by its solution between a
``{solution-start}`` and a ``{solution-end}`` cell (the book folds it into a drop-down), and the solution's
cells carry the cell tag ``solution``. A cell counts as a solution when it has the tag or sits between the
fences. In the student copy the fences go, and each solution cell becomes a stub:

- a code cell keeps its imports, and each function it defines keeps its signature but raises
  ``NotImplementedError``, so the check cell below fails until the student writes the body;
- a code cell that does more than define functions (computes a value, prints) raises
  ``NotImplementedError`` itself, after those stubs;
- a markdown cell (a derivation) becomes "Your answer here".

Outputs and execution counts are cleared, since they would show the answers. Under "Run All" a student
copy therefore stops at its first exercise, while CI runs the instructor copies under nbval
(``tests/test_student.py`` checks both). Chapter: How to use this book.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

TAG = "solution"
START, END = "```{solution-start}", "```{solution-end}"
NOTEBOOKS = Path("notebooks")  # the instructor copies, from the repository root


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def _lines(text: str) -> list[str]:
    """``text`` as a notebook stores it: one string per line, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


def solutions(nb: dict, name: str = "notebook") -> dict[int, str]:
    """{cell index: exercise label} of the solution cells: tagged ``solution`` or between the fences
    (label '' for a tagged cell outside them). Unbalanced fences are a ``ValueError`` naming the cell."""
    found, label = {}, None
    for i, cell in enumerate(nb["cells"]):
        text = _source(cell)
        if cell["cell_type"] == "markdown" and text.startswith(START):
            if label is not None:
                raise ValueError(f"{name} cell {i}: a second solution-start before the solution-end of {label!r}")
            label = text.splitlines()[0].removeprefix(START).strip()
        elif cell["cell_type"] == "markdown" and text.startswith(END):
            if label is None:
                raise ValueError(f"{name} cell {i}: solution-end without a solution-start before it")
            label = None
        elif label is not None or TAG in cell.get("metadata", {}).get("tags", []):
            found[i] = label or ""
    if label is not None:
        raise ValueError(f"{name}: the solution of {label!r} has no solution-end cell")
    return found


def stub(cell: dict, label: str) -> dict:
    """The student's version of one solution cell (see the module docstring)."""
    exercise = f"exercise {label}" if label else "this exercise"
    if cell["cell_type"] != "code":
        return {"cell_type": "markdown", "id": cell.get("id", "answer"), "metadata": {"tags": ["student"]},
                "source": _lines(f"*Your answer here* ({exercise}).")}
    keep, acts = [], False
    try:
        body = ast.parse(_source(cell)).body
    except SyntaxError:  # IPython syntax (%magic, !shell): nothing to keep, the stub only raises
        body, acts = [], True
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            keep.append(ast.unparse(node))
        elif isinstance(node, ast.FunctionDef):
            keep.append(f"def {node.name}({ast.unparse(node.args)}):\n"
                        f"    raise NotImplementedError(\"{exercise}: write {node.name}() here\")")
        else:
            acts = True
    todo = "write the stubs' bodies, then run the check below" if not acts else "replace this cell and run it"
    lines = [f"# Your code here ({exercise}): {todo}."]
    for block in keep:
        lines.append(("\n\n" if block.startswith("def ") and len(lines) > 1 else "") + block)
    if acts:
        lines.append(("\n\n" if len(lines) > 1 else "") + f"raise NotImplementedError(\"{exercise}: your code here\")")
    return {"cell_type": "code", "execution_count": None, "id": cell.get("id", "todo"),
            "metadata": {"tags": ["student"]}, "outputs": [], "source": _lines("\n".join(lines))}


def student_copy(nb: dict, name: str = "notebook") -> tuple[dict, int]:
    """(the student copy of ``nb``, the number of solution cells replaced)."""
    found = solutions(nb, name)
    cells = []
    for i, cell in enumerate(nb["cells"]):
        text = _source(cell)
        if cell["cell_type"] == "markdown" and (text.startswith(START) or text.startswith(END)):
            continue
        if i in found:
            cells.append(stub(cell, found[i]))
            continue
        cell = {**cell, "metadata": {k: v for k, v in cell.get("metadata", {}).items() if k != "execution"}}
        if cell["cell_type"] == "code":
            cell.update(outputs=[], execution_count=None)
        cells.append(cell)
    metadata = {k: v for k, v in nb.get("metadata", {}).items() if k != "widgets"}
    return {**nb, "metadata": metadata, "cells": cells}, len(found)


def write_student_copies(out: str | Path, notebooks=None, force: bool = False) -> list[tuple[Path, int | None]]:
    """Write the student copy of each notebook (default: every chapter in ``notebooks/`` with at least one
    solution) into ``out``; returns (path, solutions replaced) per notebook, with None for a copy that was
    already there and is kept (it may hold a student's work), unless ``force``."""
    out = Path(out)
    paths = [Path(p) for p in notebooks] if notebooks else sorted(NOTEBOOKS.glob("*.ipynb"))
    if not paths:
        raise ValueError(f"no notebooks in {NOTEBOOKS.resolve()}: run from the repository root, or name the "
                         f"notebooks, e.g. python -m labkit.student _build/student notebooks/schedules.ipynb")
    for path in paths:
        if path.suffix != ".ipynb" or not path.is_file():
            raise ValueError(f"{path} is not a notebook file: expected an existing .ipynb, e.g. "
                             f"notebooks/schedules.ipynb")
        if out.resolve() == path.resolve().parent:
            raise ValueError(f"out={str(out)!r} is the folder of {path.name}: the student copies would replace "
                             f"the instructor's; choose another folder, e.g. _build/student")
    written = []
    for path in paths:
        copy, replaced = student_copy(json.loads(path.read_text(encoding="utf-8")), str(path))
        if not replaced and not notebooks:
            continue  # a chapter without exercises has nothing to hand in
        out.mkdir(parents=True, exist_ok=True)
        target = out / path.name
        if target.exists() and not force:
            written.append((target, None))
            continue
        target.write_text(json.dumps(copy, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append((target, replaced))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m labkit.student", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the student copies, e.g. _build/student")
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="instructor notebooks (default: every chapter in notebooks/ with exercises)")
    parser.add_argument("--force", action="store_true", help="overwrite student copies that are already there")
    args = parser.parse_args(argv)
    try:
        written = write_student_copies(args.out, args.notebooks, args.force)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    for path, replaced in written:
        if replaced is None:
            print(f"{path}: kept, it is already there (your work?); --force overwrites it")
        else:
            print(f"{path}: {replaced} solution cell{'s' * (replaced != 1)} replaced by stub{'s' * (replaced != 1)}")
    kept = sum(replaced is None for _path, replaced in written)
    print(f"{len(written)} student notebooks in {args.out}{f' ({kept} kept)' if kept else ''}; open them with "
          f"LABKIT_QUICK=1 jupyter lab {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
