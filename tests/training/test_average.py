"""The weight average: timm's update on one process; one and the same average on every process of
a DDP run, whose batch-norm statistics are the processes' mean. (small_model and train_step serve
tests/two_process_checks.py too.)"""
import pytest
import torch
from timm.utils import ModelEmaV3

from transfer.training.average import WeightAverage


def small_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))


def train_step(model, optimizer, seed):
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    model(x).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_one_process_averages_exactly_as_timm():
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ours, timms = WeightAverage(model, 0.9), ModelEmaV3(model, decay=0.9, use_warmup=True)
    for step in range(1, 6):
        train_step(model, optimizer, step)
        ours.update(model, step=step)
        timms.update(model, step=step)
    a, b = ours.module.state_dict(), timms.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["1.running_mean"], model.state_dict()["1.running_mean"])  # it averaged


@pytest.mark.slow
def test_every_process_holds_the_same_average_the_mean_of_their_statistics(two_process_checks):
    # (tests/two_process_checks.py: each process trains on its own batches under DDP)
    assert two_process_checks["shared average"] == "same"
    assert two_process_checks["shared average is the mean"] == "True"
    assert two_process_checks["per-process average"] == "different"  # what the average was before
