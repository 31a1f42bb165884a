"""agree(): two gloo ranks on the CPU that see different losses must still train at one batch size and LR.

All distributed checks share one spawned run of 2 processes (each start imports torch, ~2-3 s): every
rank writes what it saw to a JSON file under tmp_path and the parent compares them.
"""
import datetime
import json
import os
import traceback

import pytest
import torch

import labkit.strategies as s
from labkit.integrations.distributed import agree
from labkit.strategies import LRCoupling
from ranks import spawn

WORLD = 2
# Each rank's loss per decision. Alone, rank 0 oscillates (grow, shrink, ...) and rank 1 too, out of
# phase; their mean 2.0, 2.0, 1.9, 1.8, 1.6, 1.45 holds, then falls every time: 32 → 512.
LOSSES = [[2.0, 1.8, 1.9, 1.5, 1.6, 1.2],
          [2.0, 2.2, 1.9, 2.1, 1.6, 1.7]]
MEAN_SIZES = [32, 32, 64, 128, 256, 512]


def loss_strategy():
    return s.build("loss", b_init=32, delta="diff", max_batch=512)


def sgd():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)


def _run(strategy, coupling, losses, step):
    sizes, lrs = [], []
    for loss in losses:
        sizes.append(step(strategy, coupling, loss))
        lrs.append(coupling.optimizer.param_groups[0]["lr"])
    return {"sizes": sizes, "lrs": lrs, "state": strategy.state_dict(), "coupling": coupling.state_dict()}


def _agreed(strategy, coupling, loss):
    return agree(strategy, loss=torch.tensor(loss, dtype=torch.float64), coupling=coupling)  # a tensor, as in a loop


def _alone(strategy, coupling, loss):
    size = strategy.step(loss=loss)
    coupling.step(size)
    return size


def _error(call):
    try:
        call()
    except Exception as error:                    # noqa: BLE001 - the parent checks type and message
        return [type(error).__name__, str(error)]
    return None


def _worker(rank, tmp):
    out = {}
    try:
        torch.set_num_threads(1)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                                             world_size=WORLD, timeout=datetime.timedelta(seconds=20))
        strategy = loss_strategy()
        out["agreed"] = _run(strategy, LRCoupling(sgd(), strategy.batch_size), LOSSES[rank], _agreed)
        strategy = loss_strategy()
        out["alone"] = _run(strategy, LRCoupling(sgd(), strategy.batch_size), LOSSES[rank], _alone)
        # gns given on rank 0 only: every rank raises (none waits forever for the others)
        out["mismatch"] = _error(lambda: agree(s.build("gns"), gns=100.0 if rank == 0 else None))
        # a value that is not a number on rank 1: rank 1 names it, rank 0 refuses the NaN mean
        out["not_a_number"] = _error(lambda: agree(loss_strategy(), loss=1.0 if rank == 0 else "low"))
        # the mean entropy 5 nats is out of range for 2 classes: rank 0's error reaches rank 1
        out["rank0_fails"] = _error(lambda: agree(s.build("confidence", num_classes=2), entropy=5.0))
        # memory: the fullest rank (0.95 > high = 0.9) decides: shrink to 64 · 0.8 / 0.95 ≈ 54; the mean
        # (0.625, inside [0.6, 0.9]) would hold at 64
        out["memory"] = agree(s.build("memory", b_init=64, max_batch=4096), memory=0.3 if rank == 0 else 0.95)
        # after the errors the group still works: the ranks called the same collectives
        out["after"] = agree(s.build("gns", b_init=32), gns=64.0 + 64.0 * rank)
        torch.distributed.destroy_process_group()
    except Exception:                                 # noqa: BLE001 - reported by the parent
        out["traceback"] = traceback.format_exc()
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump(out, f)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two ranks recorded, from one spawned run."""
    tmp = tmp_path_factory.mktemp("ddp")
    return spawn(_worker, (str(tmp),), WORLD, tmp, timeout=60)


def test_memory_is_the_largest_share_over_the_ranks(ranks):
    assert ranks[0]["memory"] == ranks[1]["memory"] == round(64 * 0.8 / 0.95)


def test_ranks_agree_on_every_decision(ranks):
    zero, one = (r["agreed"] for r in ranks)
    assert zero["sizes"] == one["sizes"] == MEAN_SIZES
    assert zero["lrs"] == one["lrs"]
    assert zero["lrs"][-1] == pytest.approx(0.1 * (512 / 32) ** 0.5)   # sqrt coupling
    assert zero["state"] == one["state"]                  # history and loss tracker too
    assert zero["coupling"] == one["coupling"]


def test_agreed_sizes_are_a_single_strategy_fed_the_mean_loss(ranks):
    single = loss_strategy()
    sizes = [single.step(loss=(a + b) / 2) for a, b in zip(*LOSSES)]
    assert sizes == MEAN_SIZES
    assert ranks[0]["agreed"]["state"] == json.loads(json.dumps(single.state_dict()))


def test_without_agree_the_ranks_diverge(ranks):
    zero, one = (r["alone"] for r in ranks)
    assert zero["sizes"] == [32, 64, 32, 64, 32, 64]
    assert one["sizes"] == [32, 16, 32, 16, 32, 16]
    assert zero["lrs"][-1] != one["lrs"][-1]
    assert zero["state"] != one["state"]


def test_a_signal_on_some_ranks_only_is_an_error_on_every_rank(ranks):
    for rank, result in enumerate(ranks):
        kind, message = result["mismatch"]
        assert kind == "ValueError"
        assert "'gns' on 1 of 2 ranks" in message and "on every rank, or on none" in message
        assert f"rank {rank} {'passes it' if rank == 0 else 'does not'}" in message


def test_a_bad_value_raises_on_every_rank_and_the_group_survives(ranks):
    kind, message = ranks[1]["not_a_number"]
    assert kind == "TypeError" and "loss='low' on rank 1 must be a number" in message
    kind, message = ranks[0]["not_a_number"]
    assert kind == "ValueError" and "not finite" in message
    kind, message = ranks[0]["rank0_fails"]
    assert kind == "ValueError" and "outside [0, log C]" in message
    kind, message = ranks[1]["rank0_fails"]
    assert kind == "ValueError" and "rank 0 could not step" in message and "outside [0, log C]" in message
    assert ranks[0]["after"] == ranks[1]["after"] == 64          # mean gns 96, capped at ×2 from 32


def test_without_a_process_group_agree_is_step():
    assert not torch.distributed.is_initialized()
    strategy, reference = loss_strategy(), loss_strategy()
    optimizer = sgd()
    coupling = LRCoupling(optimizer, strategy.batch_size, rule="linear")
    for loss in LOSSES[0]:
        assert agree(strategy, loss=loss, coupling=coupling) == reference.step(loss=loss)
    assert strategy.state_dict() == reference.state_dict()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * reference.batch_size / 32)


def test_a_group_of_one_rank_is_step(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0,
                                         world_size=1)
    try:
        strategy, reference = loss_strategy(), loss_strategy()
        sizes = [agree(strategy, loss=loss) for loss in LOSSES[0]]
        assert sizes == [reference.step(loss=loss) for loss in LOSSES[0]]
    finally:
        torch.distributed.destroy_process_group()
