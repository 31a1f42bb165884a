"""`labkit tune --jobs N` stops at once when interrupted: Ctrl-C (SIGINT) or SIGTERM (schedulers, `timeout`)
sent to the parent alone cancels the queued trials, ends the running workers (they resume from their
checkpoints), prints one line and exits 130 / 143 within seconds, leaving no worker behind.

Each test starts `python -m labkit tune` on digits on the CPU with trials far too long to finish, waits until
a worker has written its first epoch, signals the parent only and watches the whole process tree."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

psutil = pytest.importorskip("psutil")

TRIALS = ["0.01", "0.02", "0.05", "0.1"]           # 4 trials on 2 workers: 2 running, 2 queued


def start_tune(out, log):
    argv = [sys.executable, "-m", "labkit", "tune", "--dataset", "digits", "--model", "mlp", "--epochs", "500",
            "--device", "cpu", "--no-progress", "--runs", "fixed:b_init=32", "--lrs", *TRIALS, "--jobs", "2",
            "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # output to a file, not a pipe (an orphaned worker would hold a pipe open); its own session: only this
    # test signals it, never a Ctrl-C meant for pytest
    with open(log, "w") as file:
        return subprocess.Popen(argv, env=env, stdout=file, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_training(proc, out, timeout=60.0):
    """Until some trial has a history.csv (a worker finished an epoch); the parent's descendants then."""
    deadline = time.monotonic() + timeout
    while not list(out.glob("*/lr=*/history.csv")):
        if proc.poll() is not None:
            pytest.fail(f"tune ended before training (exit {proc.returncode})")
        if time.monotonic() > deadline:
            pytest.fail(f"no trial wrote an epoch within {timeout:g} s")
        time.sleep(0.2)
    return psutil.Process(proc.pid).children(recursive=True)


def alive(processes):
    """The ones still running (a zombie has ended; it only waits to be reaped)."""
    running = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                running.append(p)
        except psutil.NoSuchProcess:
            pass
    return running


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_tune_stops_its_workers_at_once(tmp_path, signum, code):
    out = tmp_path / "tune"
    log = tmp_path / "tune.log"
    proc = start_tune(out, log)
    descendants = []
    try:
        descendants = wait_until_training(proc, out)
        workers = [p for p in descendants if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in descendants]          # the pool's two workers
        sent = time.monotonic()
        proc.send_signal(signum)                                                # the parent only
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tune still running 15 s after {signum.name}")
        took = time.monotonic() - sent
        output = log.read_text()
        assert proc.returncode == code, (proc.returncode, output)
        assert took < 15
        lines = [line for line in output.splitlines() if line.startswith("interrupted:")]
        assert len(lines) == 1, output
        assert lines[0] == "interrupted: 0 of 4 finished, the other 4 stopped (they resume when run again)"
        if signum == signal.SIGINT:                                             # and the CLI's own line
            assert "labkit tune: interrupted; run the same command again to continue" in output, output
        assert "Traceback" not in output and "leaked" not in output, output     # no worker's traceback, no
                                                                                 # semaphore left to clean up
        _, left = psutil.wait_procs(descendants, timeout=5)
        assert not alive(left), [(p.pid, p.cmdline()) for p in alive(left)]
        assert not (out / "tune.csv").exists()                                 # nothing finished: no table yet
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in alive(descendants):                                           # a failed test leaves none
            p.kill()


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_killed_tune_takes_its_workers_with_it(tmp_path):
    """SIGKILL to the parent runs no handler; the workers still end (the kernel's parent-death signal)."""
    out = tmp_path / "tune"
    proc = start_tune(out, tmp_path / "tune.log")
    descendants = []
    try:
        descendants = wait_until_training(proc, out)
        workers = [p for p in descendants if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in descendants]
        proc.kill()
        proc.wait(timeout=15)
        _, left = psutil.wait_procs(workers, timeout=10)
        assert not alive(left), [(p.pid, p.cmdline()) for p in alive(left)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in alive(descendants):
            p.kill()
