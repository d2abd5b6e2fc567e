"""FSDP2 (`fully_shard` per layer + root, through Lightning's ModelParallelStrategy as strategy="fsdp2_nested")
trains nested subnets on sharded parameters exactly: 2 processes launched by torchrun (gloo, CPU) end with the
parameters of 1 unsharded process on the same global batch. Sliced views of the all-gathered weights work in
forward and backward; a layer that no subnet of a step runs issues no all-gather or reduce-scatter, on every
rank alike; the one-file checkpoint is gathered from the shards and loads in one process.

Lightning's FSDPStrategy (FSDP1) refuses CPU; ModelParallelStrategy (FSDP2) runs on CPU with gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sortednet as sn

WORKER = Path(__file__).with_name("distributed_worker.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}

RUNS = [  # uniform seed 3: step 2 skips layer 3 in every subnet
    {"sampler": "uniform", "k": 2, "seed": 3, "accumulate": 2, "steps": 3},
    {"sampler": "sandwich", "k": 3, "seed": 1, "accumulate": 2, "steps": 3, "reshard": False},
    {"sampler": "sorted", "k": 1, "seed": 1, "accumulate": 2, "steps": 3},
]

pytestmark = pytest.mark.slow


def launch(cmd: list[str], out: Path, ranks: int) -> list[list[dict]]:
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(f"{out}.rank{r}.pt", weights_only=False)["results"] for r in range(ranks)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    fsdp_runs = [
        {**run, "strategy": "fsdp2_nested", "save": str(tmp / f"run{i}.safetensors")}
        for i, run in enumerate(RUNS)
    ]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    fsdp = launch(
        [*torchrun, str(WORKER), str(tmp / "fsdp"), "2", "8", json.dumps(fsdp_runs)], tmp / "fsdp", 2
    )
    single = launch(
        [sys.executable, str(WORKER), str(tmp / "one"), "1", "16", json.dumps(RUNS)], tmp / "one", 1
    )
    return fsdp, single[0], tmp


@pytest.mark.parametrize("index", range(len(RUNS)), ids=[f"{r['sampler']}" for r in RUNS])
def test_fsdp_two_processes_train_the_parameters_of_one(trained, index):
    (rank0, rank1), single, tmp = trained
    a, b, one = rank0[index], rank1[index], single[index]
    assert a["sharded"] and b["sharded"] and not one["sharded"]
    assert a["global_step"] == one["global_step"] == RUNS[index]["steps"]
    assert a["subnets"] == b["subnets"] == one["subnets"]
    assert a["state"].keys() == one["state"].keys() and b["state"] == {}  # gathered on rank 0 only
    for name, value in a["state"].items():
        torch.testing.assert_close(value, one["state"][name], rtol=1e-5, atol=1e-12, msg=name)
    loaded = sn.load(tmp / f"run{index}.safetensors")  # the one-file checkpoint, gathered from the shards
    assert loaded.metadata["global_step"] == RUNS[index]["steps"]
    for name, value in loaded.base_state_dict().items():
        torch.testing.assert_close(value, one["state"][name], rtol=1e-5, atol=1e-12, msg=name)


@pytest.mark.parametrize("index", range(len(RUNS)), ids=[f"{r['sampler']}" for r in RUNS])
def test_fsdp_collectives_follow_the_layers_that_run(trained, index):
    """Per optimizer step, each subnet's forward and backward touch the units it runs (its layers + the root):
    reduce-scatters = sum over subnets of (depth + 1), all-gathers twice that (once with reshard_after_forward
    False). Skipped layers issue none, and both ranks issue the same collectives."""
    (rank0, rank1), _, _ = trained
    run = RUNS[index]
    acc = run["accumulate"]
    assert rank0[index]["dispatched"] == rank1[index]["dispatched"]
    skipped = 0
    for step in range(run["steps"]):
        subnets = [s for micro in rank0[index]["subnets"][step * acc : (step + 1) * acc] for s in micro]
        units = sum(sn.Subnet.parse(s)["depth"] + 1 for s in subnets)
        calls = rank0[index]["dispatched"][step]
        assert calls["_reduce_scatter_base_"] == units, (step, subnets, calls)
        assert calls["_allgather_base_"] == units * (2 if run.get("reshard", True) else 1)
        # no DDP-style reduction on top of FSDP's: the one all-reduce is the NaN guard's 1-element flag
        assert calls.get("allreduce_") == 1 and "barrier" not in calls, calls
        skipped += max(sn.Subnet.parse(s)["depth"] for s in subnets) < 3
    if run["sampler"] in ("uniform", "sorted"):
        assert skipped  # a step where layer 3 ran in no subnet: its unit issued no collective at all


def test_cli_fsdp_trains_writes_one_file_and_resumes_on_one_process(tmp_path):
    exe = Path(sys.executable).with_name("sortednet-train")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "sortednet.train"]
    quick = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=2",
             "callbacks.checkpoint.every_n_train_steps=2", "callbacks.progress=null", "eval_table.max_batches=2"]  # fmt: skip
    fsdp = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    run = tmp_path / "run"
    result = subprocess.run([*cmd, *fsdp, *quick, f"hydra.run.dir={run}"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("every sub-model on the validation set") == 1
    nested = sn.load(run / "checkpoints" / "last.safetensors")
    assert nested.metadata["global_step"] == 4 and len(nested.metadata["eval_table"]) == 18
    again = subprocess.run(
        [*cmd, "trainer=cpu", "trainer.max_steps=6", *quick[1:], f"ckpt_path={run}/checkpoints/last.ckpt",
         f"hydra.run.dir={tmp_path}/resumed"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    assert sn.load(tmp_path / "resumed" / "checkpoints" / "last.safetensors").metadata["global_step"] == 6
