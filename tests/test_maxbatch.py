"""bench/maxbatch.py on the CPU: a memory budget stands in for the GPU's memory; the affine search meets its
tries and accuracy targets against the bisection's true maximum, and the CSV carries its provenance."""
import subprocess
import sys

import pandas as pd
import pytest

from labkit.runtime import REPO


def maxbatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.maxbatch", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_cpu_smoke_run_writes_the_table(tmp_path):
    out = tmp_path / "maxbatch.csv"
    run = maxbatch("--device", "cpu", "--budget-mb", "60", "--start", "8", "--limit", "512", "--repeats", "1",
                   "--methods", "labkit-affine", "labkit-bisect", "accelerate", "--out", str(out))
    assert run.returncode == 0, run.stderr
    table = pd.read_csv(out).set_index("method")
    assert list(table.index) == ["labkit-affine", "labkit-bisect", "accelerate"]
    assert table.true_max.nunique() == 1 and table.loc["labkit-bisect", "below_true_pct"] == 0
    affine = table.loc["labkit-affine"]
    assert affine.trials <= 5 < table.loc["labkit-bisect", "trials"] and 0 <= affine.below_true_pct <= 2
    assert (table.found <= table.true_max).all()                      # nothing above what fits
    assert {"device_name", "torch", "commit", "date", "command", "budget_mb"} <= set(table.columns)
    assert "time_vs_accelerate" in run.stdout and "meets_target" in run.stdout


@pytest.mark.parametrize("args, words", [
    (["--device", "cpu"], "on the CPU the search needs --budget-mb"),
    (["--device", "cpu", "--budget-mb", "0"], "--budget-mb 0: expected a number of MiB > 0"),
    (["--device", "cpu", "--budget-mb", "60", "--methods", "labkit-affine"], "must include 'labkit-bisect'"),
    (["--device", "cpu", "--budget-mb", "60", "--start", "64", "--limit", "32"],
     "--limit 32: expected an integer >= 64"),
    (["--device", "cpu", "--budget-mb", "60", "--limit", "512", "--accelerate-start", "1024"],
     "--accelerate-start 1024: expected an integer from 1 to --limit (512)"),
])
def test_bad_arguments_exit_2_with_one_line(args, words):
    run = maxbatch(*args)
    assert run.returncode == 2 and words in run.stderr.strip().splitlines()[-1]


def test_a_limit_that_fits_whole_is_refused_not_reported_as_the_true_maximum(tmp_path):
    """With every size up to --limit fitting, bisection "finds" the limit: the bench stops instead of
    measuring the others against it (accelerate would start past the images and report its start)."""
    run = maxbatch("--device", "cpu", "--budget-mb", "600", "--start", "8", "--limit", "64", "--repeats", "1",
                   "--methods", "labkit-bisect", "accelerate", "--out", str(tmp_path / "m.csv"))
    assert run.returncode != 0 and not (tmp_path / "m.csv").exists()
    assert "every size up to --limit 64 fits" in run.stderr.strip().splitlines()[-1]
