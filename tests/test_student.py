"""labkit.student: the student copy of a chapter has no solution and no output, and on "Run All" its checks
fail, while the instructor copy (the chapter as committed) passes them. Two small chapters are executed
(about 5 s each, quick mode); the rest is read as JSON."""
import json
from pathlib import Path

import pytest

from labkit import student

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((REPO / "notebooks").glob("*.ipynb"))
RUN = ["schedules.ipynb", "strategies_overview.ipynb"]  # fast chapters: one computes a value, one only defines


def read(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def source(cell):
    return "".join(cell["source"])


def is_check(cells, i):
    """A check cell: the code cell right after the "**Check.**" paragraph."""
    return cells[i]["cell_type"] == "code" and i > 0 and source(cells[i - 1]).startswith("**Check.**")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_a_solution_tag_sits_inside_a_folded_solution(path):
    """A cell tagged ``solution`` outside the fences would leave the student copy but show in the book."""
    nb = read(path)
    fenced = {i for i, label in student.solutions(nb, path.name).items() if label}
    tagged = {i for i, cell in enumerate(nb["cells"]) if "solution" in cell.get("metadata", {}).get("tags", [])}
    assert tagged <= fenced, f"{path.name}: cells {sorted(tagged - fenced)} are tagged but not in a solution"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_the_student_copy_keeps_no_solution_and_no_output(path):
    nb = read(path)
    copy, replaced = student.student_copy(nb, path.name)
    assert replaced == len(student.solutions(nb))
    text = "\n".join(source(cell) for cell in copy["cells"])
    assert "solution-start" not in text and "solution-end" not in text
    found = student.solutions(nb)
    elsewhere = {line for i, cell in enumerate(nb["cells"]) if i not in found for line in source(cell).splitlines()}
    for i in found:  # the lines found only in a solution, but its imports and signatures
        own = {line for line in source(nb["cells"][i]).splitlines() if line.strip()
               and not line.startswith(("def ", "import ", "from "))} - elsewhere
        assert own and not any(line in text.splitlines() for line in own), f"{path.name} cell {i}: solution left"
    code = [cell for cell in copy["cells"] if cell["cell_type"] == "code"]
    assert all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)
    exercises = sum(source(cell).startswith("```{exercise-start}") for cell in nb["cells"])
    stubs = [cell for cell in copy["cells"] if "student" in cell["metadata"].get("tags", [])]
    assert len(stubs) == replaced and (exercises == 0 or stubs)


def test_a_stub_keeps_imports_and_signatures_and_raises():
    cell = {"cell_type": "code", "id": "x", "metadata": {"tags": ["solution"]}, "outputs": [],
            "source": ["import math\n", "\n", "\n", "def f(a, b=2, *rest, c=None):\n", "    return a\n"]}
    stubbed = source(student.stub(cell, "ex-one"))
    assert "import math" in stubbed and "def f(a, b=2, *rest, c=None):" in stubbed
    assert "return a" not in stubbed and stubbed.rstrip().endswith('write f() here")')
    cell["source"] = ["x = 2 ** 0.5\n", "print(x)\n"]
    stubbed = source(student.stub(cell, "ex-two"))
    assert "2 ** 0.5" not in stubbed and 'raise NotImplementedError("exercise ex-two: your code here")' in stubbed
    cell["source"] = ["%time x = 1\n"]  # IPython syntax: nothing to keep
    stubbed = source(student.stub(cell, "ex-magic"))
    assert stubbed.endswith('raise NotImplementedError("exercise ex-magic: your code here")')
    prose = student.stub({"cell_type": "markdown", "metadata": {}, "source": ["Since $r < 1$ ..."]}, "ex-three")
    assert source(prose) == "*Your answer here* (exercise ex-three)."


def test_unbalanced_fences_name_the_cell():
    start = {"cell_type": "markdown", "metadata": {}, "source": ["```{solution-start} ex-a\n", ":class: dropdown\n```"]}
    end = {"cell_type": "markdown", "metadata": {}, "source": ["```{solution-end}\n```"]}
    with pytest.raises(ValueError, match="cell 0: solution-end without a solution-start"):
        student.solutions({"cells": [end]})
    with pytest.raises(ValueError, match="the solution of 'ex-a' has no solution-end cell"):
        student.solutions({"cells": [start]})
    with pytest.raises(ValueError, match="cell 1: a second solution-start before the solution-end of 'ex-a'"):
        student.solutions({"cells": [start, start, end]})


def test_the_instructor_copies_cannot_be_overwritten(tmp_path):
    with pytest.raises(ValueError, match="the student copies would replace the instructor's"):
        student.write_student_copies(REPO / "notebooks", [REPO / "notebooks" / "schedules.ipynb"])
    with pytest.raises(ValueError, match="is not a notebook file"):
        student.write_student_copies(tmp_path, [REPO / "notebooks" / "missing.ipynb"])


def test_the_command_writes_every_chapter_with_exercises(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    student.main([str(tmp_path)])
    printed = capsys.readouterr().out.splitlines()
    with_exercises = [p.name for p in CHAPTERS if student.solutions(read(p))]
    assert sorted(p.name for p in tmp_path.iterdir()) == with_exercises
    assert printed[-1].startswith(f"{len(with_exercises)} student notebooks in {tmp_path}")
    work = tmp_path / "schedules.ipynb"
    work.write_text("{}")  # a student's work is never overwritten, unless asked to
    student.main([str(tmp_path), str(REPO / "notebooks" / "schedules.ipynb")])
    assert work.read_text() == "{}" and "kept, it is already there" in capsys.readouterr().out
    student.main([str(tmp_path), str(REPO / "notebooks" / "schedules.ipynb"), "--force"])
    assert read(work)["cells"]


def run_all(nb, folder):
    """Execute like Jupyter's "Run All", but carry on past errors; returns {cell index: error name}."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.reads(json.dumps(nb), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(folder)}}).execute()
    return {i: output["ename"] for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == "error"}


@pytest.mark.slow
@pytest.mark.parametrize("name", RUN)
def test_run_all_fails_the_checks_of_the_student_copy_and_passes_the_instructors(name, tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_QUICK", "1")  # the kernels inherit it
    path = REPO / "notebooks" / name
    assert run_all(read(path), path.parent) == {}, "the instructor copy must pass"
    (copy_path, replaced), = student.write_student_copies(tmp_path, [path])
    copy = read(copy_path)
    errors = run_all(copy, tmp_path)
    checks = [i for i in range(len(copy["cells"])) if is_check(copy["cells"], i)]
    assert replaced and checks and set(checks) <= set(errors), f"checks {checks} vs errors {errors}"
    first = min(errors)  # where "Run All" stops: the first exercise, at its stub or its check
    assert errors[first] == "NotImplementedError"
    assert is_check(copy["cells"], first) or "student" in copy["cells"][first]["metadata"]["tags"]
