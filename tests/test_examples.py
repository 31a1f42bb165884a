"""examples/: each script trains 2 epochs on 128 MNIST images on the CPU, and each labkit version differs from
its plain version in a few lines (the plain-PyTorch one in at most 6).

The scripts run in this process (``main(argv)``): torch, Lightning and accelerate are imported once for all.
MNIST comes from ``$LABKIT_DATA/mnist`` or ``../shared/datasets/mnist`` beside the repository; torchvision
reads extracted files, so gzipped ones are extracted once into a temporary folder.
"""
from __future__ import annotations

import ast
import difflib
import gzip
import importlib.util
import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PAIRS = {"PyTorch": ("mnist_plain", "mnist_labkit"), "Lightning": ("lightning_plain", "lightning_labkit"),
         "accelerate": ("accelerate_plain", "accelerate_labkit")}
NEEDS = {"lightning_plain": "lightning", "lightning_labkit": "lightning", "accelerate_plain": "accelerate",
         "accelerate_labkit": "accelerate"}
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def code_lines(name: str) -> list[str]:
    """The lines of examples/NAME.py after its module docstring (each file's docstring describes it)."""
    source = (EXAMPLES / f"{name}.py").read_text()
    docstring = ast.parse(source).body[0]
    return source.splitlines()[docstring.end_lineno:]


def diff_counts(plain: str, labkit: str) -> tuple[int, int]:
    """(lines added or rewritten, lines removed or rewritten) from the plain version to the labkit one."""
    diff = list(difflib.unified_diff(code_lines(plain), code_lines(labkit), lineterm="", n=0))
    changes = [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    return sum(line[0] == "+" for line in changes), sum(line[0] == "-" for line in changes)


def test_each_labkit_example_is_its_plain_version_with_a_few_lines_changed():
    counts = {name: diff_counts(*pair) for name, pair in PAIRS.items()}
    for name, (added, removed) in counts.items():
        print(f"{name:>10}: {PAIRS[name][1]}.py = {PAIRS[name][0]}.py +{added} -{removed} lines")
    assert counts["PyTorch"][0] <= 6
    assert all(added <= 7 and removed <= 2 for added, removed in counts.values())
    for plain, labkit in PAIRS.values():    # every line the labkit version adds or rewrites is marked
        added = [line for line in difflib.unified_diff(code_lines(plain), code_lines(labkit), lineterm="", n=0)
                 if line.startswith("+") and not line.startswith("+++")]
        assert all(line.endswith("# labkit") or line.endswith(",") for line in added), added


def test_the_book_page_shows_the_current_diffs():
    """book/own-loop.md shows each pair's diff (1 line of context): it must be the diff of the files now."""
    blocks = re.findall(r"```diff\n(.*?)\n```", (REPO / "book" / "own-loop.md").read_text(), re.S)
    expected = ["\n".join(difflib.unified_diff(code_lines(plain), code_lines(labkit), f"examples/{plain}.py",
                                               f"examples/{labkit}.py", lineterm="", n=1))
                for plain, labkit in PAIRS.values()]
    assert [block.rstrip() for block in blocks] == [diff.rstrip() for diff in expected]   # a last blank context line


@pytest.fixture(scope="module")
def mnist_data(tmp_path_factory) -> Path:
    """A folder holding mnist/MNIST/raw with the four extracted idx files."""
    roots = [Path(os.environ["LABKIT_DATA"])] if os.environ.get("LABKIT_DATA") else []
    roots.append(REPO.parent / "shared" / "datasets")
    for root in roots:
        raw = root / "mnist" / "MNIST" / "raw"
        if all((raw / name).exists() for name in MNIST_FILES):
            return root
        if all((raw / f"{name}.gz").exists() for name in MNIST_FILES):
            copy = tmp_path_factory.mktemp("data")
            (copy / "mnist" / "MNIST" / "raw").mkdir(parents=True)
            for name in MNIST_FILES:
                with gzip.open(raw / f"{name}.gz") as src, open(copy / "mnist" / "MNIST" / "raw" / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            return copy
    pytest.skip(f"MNIST not found under {', '.join(map(str, roots))}: set LABKIT_DATA to a folder holding "
                f"mnist/MNIST/raw")


def load(name: str):
    """examples/NAME.py as a module (its ``from mnist_plain import ...`` finds the sibling file)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [name for pair in PAIRS.values() for name in pair])
def test_example_trains_two_epochs_on_a_subset(name, mnist_data, monkeypatch, tmp_path, capsys):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name], reason=f"{name}.py needs {NEEDS[name]}: pip install -e '.[dev]'")
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.chdir(tmp_path)                        # Lightning writes lightning_logs/ here
    load(name).main(["--data", str(mnist_data), "--epochs", "2", "--subset", "128", "--no-accel"])
    out = capsys.readouterr().out
    assert ("'accuracy'" in out) if name.startswith("lightning") else ("epoch 2: train loss" in out), out
