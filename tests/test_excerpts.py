"""Code excerpts in the chapters are verbatim copies of labkit's source (#15 item 7).

A chapter that needs to show code quotes a few lines in a markdown cell, under a caption that names the
file and the function::

    ```{code-block} python
    :caption: labkit/signals.py, LossEMA.update
    ...lines copied from the file...
    ```

(or a plain python fence after a line ``*labkit/signals.py, LossEMA.update:*``). These tests fail when the
quoted lines no longer appear, contiguously and with the same indentation, inside that definition of that
file: edit the library and the excerpt goes stale loudly, not silently.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
MAX_LINES = 15

DIRECTIVE = re.compile(r"^```\{code-block\} python\s*$")
CAPTION = re.compile(r"^:caption: (labkit/[\w/]+\.py), ([\w.]+)\s*$")
LABEL = re.compile(r"^\*(labkit/[\w/]+\.py), ([\w.]+):\*\s*$")


def excerpts_in(markdown: str) -> list[tuple[str, str, list[str]]]:
    """(file, qualified name, lines) for every captioned excerpt of a markdown cell."""
    lines = markdown.splitlines()
    found = []
    i = 0
    while i < len(lines):
        source = None
        if DIRECTIVE.match(lines[i]):
            j = i + 1
            while j < len(lines) and lines[j].startswith(":"):   # the directive's options
                match = CAPTION.match(lines[j])
                source = (match.group(1), match.group(2)) if match else source
                j += 1
            if j < len(lines) and not lines[j].strip():           # MyST's blank line after the options
                j += 1
        elif LABEL.match(lines[i]) and i + 1 < len(lines) and lines[i + 1].strip() == "```python":
            match = LABEL.match(lines[i])
            source, j = (match.group(1), match.group(2)), i + 2
        if source is None:
            i += 1
            continue
        end = next((k for k in range(j, len(lines)) if lines[k].strip() == "```"), None)
        assert end is not None, f"excerpt of {source[0]}, {source[1]} has no closing fence"
        found.append((*source, lines[j:end]))
        i = end + 1
    return found


def all_excerpts() -> list[tuple[str, str, str, list[str]]]:
    out = []
    for path in NOTEBOOKS:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                out += [(path.name, *e) for e in excerpts_in("".join(cell["source"]))]
    return out


EXCERPTS = all_excerpts()


def definition_lines(tree: ast.Module, qualname: str) -> tuple[int, int] | None:
    """First and last line (1-based) of the function or class ``qualname`` (``Class.method``)."""
    body = tree.body
    node = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            return None
        body = node.body
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return first, node.end_lineno


def test_the_chapters_quote_code_and_dump_none():
    assert EXCERPTS, "no captioned excerpt found: has the caption form changed?"
    for path in NOTEBOOKS:
        code = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert not any("inspect.getsource" in src for src in code), (
            f"{path.name} prints library source: quote a few lines or name the file instead")


@pytest.mark.parametrize("notebook, file, name, lines", EXCERPTS,
                         ids=[f"{e[0]}:{e[2]}" for e in EXCERPTS])
def test_excerpt_is_verbatim(notebook, file, name, lines):
    assert lines and any(line.strip() for line in lines), f"{notebook}: empty excerpt of {file}, {name}"
    assert len(lines) <= MAX_LINES, f"{notebook}: the excerpt of {name} has {len(lines)} lines (at most {MAX_LINES})"
    source_path = REPO / file
    assert source_path.is_file(), f"{notebook} quotes {file}, which does not exist"
    source = source_path.read_text().splitlines()
    starts = [k for k in range(len(source) - len(lines) + 1) if source[k:k + len(lines)] == lines]
    assert starts, (f"{notebook}: the excerpt of {file}, {name} is not a verbatim run of lines of the file; "
                    f"copy the current lines into the chapter")
    span = definition_lines(ast.parse("\n".join(source)), name)
    assert span is not None, f"{notebook}: {file} has no definition {name}"
    assert any(span[0] <= k + 1 and k + len(lines) <= span[1] for k in starts), (
        f"{notebook}: the excerpt's lines are in {file}, but not inside {name} (lines {span[0]}-{span[1]})")
