"""bench/baselines.sh against the committed results: every run it lists builds, was tuned, and ran 3 seeds."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from labkit.experiments import parse_run
from labkit.runtime import REPO
from labkit.strategies import build

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
SCRIPT = REPO / "bench" / "baselines.sh"


def listed(dataset: str) -> tuple[str, list[str]]:
    lines = subprocess.run(["bash", str(SCRIPT), "runs", dataset], check=True, capture_output=True,
                           text=True).stdout.splitlines()
    return lines[0], lines[1:]


@pytest.mark.parametrize("dataset", ["cifar10", "mnist", "fashion-mnist"])
def test_every_listed_run_builds_was_tuned_and_ran_three_seeds(dataset):
    out, specs = listed(dataset)
    assert len(specs) == 15, specs                      # 3 fixed batches, 11 strategies, goodput twice
    chosen = json.loads((REPO / out / "tune" / "chosen.json").read_text())
    for spec in specs:
        label, name, params = parse_run(spec)
        build(name, **params)                           # a typo in a parameter raises here
        assert label in chosen, f"{dataset}: {label} has no tuned LR"
        seeds = sorted(p.name for p in (REPO / out / label).glob("seed*") if (p / "history.csv").exists())
        assert seeds == ["seed0", "seed1", "seed2"], f"{dataset}: {label} has {seeds}"


def test_every_cifar10_run_was_timed_again_in_one_session():
    out, specs = listed("cifar10")
    timed = REPO / f"{out}-timing"
    configs = [json.loads((timed / parse_run(spec)[0] / "seed0" / "config.json").read_text()) for spec in specs]
    assert len({(c["provenance"]["commit"], c["provenance"]["date"][:10]) for c in configs}) == 1


def test_every_strategy_the_lab_compares_runs_on_every_dataset():
    names = {dataset: {parse_run(s)[1] for s in listed(dataset)[1]}
             for dataset in ("cifar10", "mnist", "fashion-mnist")}
    assert names["cifar10"] == names["mnist"] == names["fashion-mnist"]
    assert {"fixed", "linear", "exponential", "cyclical", "loss", "confidence", "gns"} <= names["cifar10"]


@pytest.mark.parametrize("args, named", [(["sweep", "imagenet"], "'imagenet'"), (["fit", "cifar10"], "'fit'"),
                                         (["target", "mnist"], "'mnist'"), (["retime", "cifar10"], "'retime'")])
def test_a_bad_step_or_dataset_is_one_line_and_exit_2(args, named):
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and named in done.stderr
