"""ReplicaNoise: two gloo replicas of a least-squares model under DDP give the same two-batch inputs as one
process computing each shard's gradient by hand (``labkit.gns.microbatch_norms``), and train the same."""
import datetime
import json
import os
import traceback

import pytest
import torch

from labkit.gns import microbatch_norms, two_batch_estimate
from ranks import spawn

WORLD, LOCAL = 2, 16
STEPS = 2


def data(step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(WORLD * LOCAL, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.3 * torch.randn(WORLD * LOCAL, generator=g)
    return x, y


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 1)


def _worker(rank, tmp):
    out = {"readings": []}
    try:
        from torch.nn.parallel import DistributedDataParallel

        from labkit.integrations.replica_noise import ReplicaNoise

        torch.set_num_threads(1)
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                                             world_size=WORLD, timeout=datetime.timedelta(seconds=20))
        ddp = DistributedDataParallel(model())
        noise = ReplicaNoise()
        ddp.register_comm_hook(None, noise.hook)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        for step in range(STEPS):
            x, y = data(step)
            shard = slice(rank * LOCAL, (rank + 1) * LOCAL)
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(ddp(x[shard]).squeeze(1), y[shard]).backward()
            optimizer.step()
            out["readings"].append(noise.reading(LOCAL))
        out["weights"] = [p.detach().flatten().tolist() for p in ddp.parameters()]
        try:
            noise.reading(LOCAL)
        except RuntimeError as error:
            out["again"] = str(error)
        torch.distributed.destroy_process_group()
    except Exception:                                 # noqa: BLE001 - reported by the parent
        out["traceback"] = traceback.format_exc()
    with open(f"{tmp}/rank{rank}.json", "w") as f:
        json.dump(out, f)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    return spawn(_worker, (str(tmp),), WORLD, tmp, timeout=60)


def by_hand():
    """One process: each shard's gradient by autograd, the norms, and plain SGD on the mean gradient."""
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    readings = []
    for step in range(STEPS):
        x, y = data(step)
        grads = []
        for r in range(WORLD):
            shard = slice(r * LOCAL, (r + 1) * LOCAL)
            loss = torch.nn.functional.mse_loss(net(x[shard]).squeeze(1), y[shard])
            grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))]))
        readings.append(microbatch_norms(grads, batch=WORLD * LOCAL))
        mean = torch.stack(grads).mean(0)
        optimizer.zero_grad()
        offset = 0
        for p in net.parameters():
            p.grad = mean[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimizer.step()
    return readings, [p.detach().flatten().tolist() for p in net.parameters()]


def test_replica_norms_are_the_two_batch_inputs_of_the_shards(ranks):
    expected, _ = by_hand()
    for result in ranks:
        for (small, b, big, bb), want in zip(result["readings"], expected):
            assert (b, bb) == (LOCAL, WORLD * LOCAL) == (want[1], want[3])
            assert small == pytest.approx(want[0], rel=1e-5) and big == pytest.approx(want[2], rel=1e-5)
    assert ranks[0]["readings"] == ranks[1]["readings"]              # every rank reads the same numbers
    estimate = two_batch_estimate(*ranks[0]["readings"][0])
    assert estimate.b_simple == pytest.approx(two_batch_estimate(*expected[0]).b_simple, rel=1e-4)


def test_the_hook_averages_like_ddp_and_resets(ranks):
    _, weights = by_hand()
    for result in ranks:
        for got, want in zip(result["weights"], weights):
            assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
        assert "no gradient went through the hook" in result["again"]
