"""Run a worker on R spawned processes (gloo ranks on the CPU) and collect what each recorded: the parent
side of every distributed test. A worker writes ``TMP/rank<r>.json``, with a ``traceback`` key if it
failed."""
import json
import multiprocessing
from pathlib import Path


def spawn(worker, args: tuple, world: int, tmp, timeout: float = 120) -> list[dict]:
    """Start ``worker(rank, *args)`` on ``world`` spawned processes, wait up to ``timeout`` s for each (a
    straggler is killed), and return every rank's record; a rank that wrote nothing or failed fails the
    test with its exit code or traceback."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker, args=(rank, *args)) for rank in range(world)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=timeout)
        if p.is_alive():
            p.kill()
            p.join()
    results = []
    for rank, p in enumerate(processes):
        path = Path(tmp) / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote nothing (exit code {p.exitcode})"
        result = json.loads(path.read_text())
        assert "traceback" not in result, f"rank {rank} failed:\n{result['traceback']}"
        results.append(result)
    return results
