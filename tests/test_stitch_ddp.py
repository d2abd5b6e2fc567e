"""Data-parallel stitched training is exact, as nested training is (tests/test_ddp.py): 2 DDP processes (gloo,
CPU, batch 8 each) give the parameters of 1 process (batch 16) on the same global batch, the ranks agree bit for
bit, and gradients are reduced once per optimizer step, although each stitch leaves most parameters unused."""

from __future__ import annotations

import pytest
import torch
from test_ddp import launch

pytestmark = pytest.mark.slow

RUNS = [
    {"model": "stitched", "sampler": "uniform", "k": 2, "seed": 3, "accumulate": 2, "steps": 3},
    {"model": "stitched", "sampler": "budget", "k": 2, "seed": 0, "accumulate": 1, "steps": 2},
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stitch_ddp")
    return launch(tmp / "ddp", 2, 8, RUNS), launch(tmp / "single", 1, 16, RUNS)[0]


@pytest.mark.parametrize("index", range(len(RUNS)), ids=[r["sampler"] for r in RUNS])
def test_two_processes_train_the_stitched_parameters_of_one(trained, index):
    (rank0, rank1), single = trained
    a, b, one = rank0[index], rank1[index], single[index]
    run = RUNS[index]
    assert a["global_step"] == one["global_step"] == run["steps"] and a["world_size"] == 2
    assert a["subnets"] == b["subnets"] == one["subnets"]
    assert any(">" in s for step in a["subnets"] for s in step)  # stitches, not only anchors, trained
    assert a["state"].keys() == one["state"].keys()
    assert any(k.startswith("stitches.") for k in a["state"])
    for name, value in a["state"].items():
        assert torch.equal(value, b["state"][name]), name
        torch.testing.assert_close(value, one["state"][name], rtol=1e-5, atol=1e-12, msg=name)
    for rank in (a, b):  # one all-reduce per optimizer step, DDP's reducer never runs
        steps = range(run["steps"])
        assert [rank["dispatched"][s] for s in steps] == [{"allreduce_": 1}] * run["steps"]
        assert [rank["ours"][s] for s in steps] == [1] * run["steps"]
        assert all(rank["ddp_hook"][s] == 0 for s in steps)
