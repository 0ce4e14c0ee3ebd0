"""Checks that need two processes of one job (gloo, on the CPU), run once under torchrun by the
session fixture `two_process_checks` (conftest.py); each prints `name: result` on rank 0.

    python -m torch.distributed.run --nproc_per_node 2 tests/two_process_checks.py
"""
import os
import sys
import types

import torch
import torch.distributed as dist

sys.path[:0] = [os.path.dirname(__file__), os.path.join(os.path.dirname(__file__), "training")]
from test_average import small_model, train_step  # noqa: E402
from transfer.training.average import WeightAverage  # noqa: E402
from transfer.training.watch import Watch  # noqa: E402


def gathered(tensor: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return out


def flat(module) -> torch.Tensor:
    return torch.cat([t.double().reshape(-1) for t in module.state_dict().values()])


def average(rank: int) -> dict[str, str]:
    """Each process trains on its own batches under DDP: the shared average is one and the same on
    both, their statistics' mean; each process's own (unshared) average differs."""
    model = torch.nn.parallel.DistributedDataParallel(small_model())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    shared, alone = WeightAverage(model.module, 0.9, num_processes=2), WeightAverage(model.module, 0.9)
    for step in range(1, 6):
        train_step(model, optimizer, 100 * rank + step)
        shared.update(model.module, step=step)
        alone.update(model.module, step=step)
    mine, alones = gathered(flat(shared.module)), gathered(flat(alone.module))
    return {"shared average": "same" if torch.equal(*mine) else "different",
            "shared average is the mean": str(torch.allclose(mine[0], (alones[0] + alones[1]) / 2, atol=1e-6)),
            "per-process average": "same" if torch.equal(*alones) else "different"}


def budget_clock(rank: int) -> dict[str, str]:
    """The time budget's clock is the slowest process's: each reads the maximum of the processes'."""
    watch = Watch(types.SimpleNamespace(device=torch.device("cpu"), num_processes=2))
    watch.start(10.0 * (rank + 1))  # seconds so far: 10 on rank 0, 20 on rank 1
    watch.check(epoch=0)
    seen = gathered(torch.tensor([watch.elapsed], dtype=torch.float64))
    return {"budget clock": " ".join(f"{float(s) // 10 * 10:.0f}" for s in seen)}  # (plus a few ms of this check)


if __name__ == "__main__":
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results = {**average(rank), **budget_clock(rank)}
    if rank == 0:
        for name, result in results.items():
            print(f"{name}: {result}")
    dist.destroy_process_group()
