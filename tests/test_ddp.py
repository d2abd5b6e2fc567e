"""Data-parallel nested training is exact: 2 DDP processes (gloo, CPU) give the parameters of 1 process on the
same global batch, with every sampler and with depth subnets that skip layers; gradients are reduced once per
optimizer step whatever K and `accumulate`; `trainer=ddp` from the Hydra CLI writes one run folder and its
checkpoint resumes on 1 process.

The trainings run in subprocesses (tests/distributed_worker.py; Lightning DDP re-runs the script per rank),
two launches in all, module-scoped: 2 processes x batch 8 and 1 process x batch 16, in float64 (so that AdamW,
which turns gradients near zero into steps of size lr, is not fed float32 rounding). DistributedSampler gives
rank r the indices perm[r::2], so micro-batch i of rank r is perm[16i + r : 16(i+1) : 2] and the two ranks
together hold perm[16i : 16(i+1)], the single process's micro-batch i: the same global batch at every step.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sortednet as sn
from sortednet.train import distributed as D

WORKER = Path(__file__).with_name("distributed_worker.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
SAMPLERS = {  # name -> (k, seed): seeds picked so that uniform and sorted have steps that skip layer 3
    "all": (12, 0),
    "uniform": (2, 3),
    "sandwich": (3, 1),
    "sorted": (1, 1),
    "budget": (2, 0),
}
EQUAL = [
    {"sampler": s, "k": k, "seed": seed, "accumulate": 2, "steps": 3} for s, (k, seed) in SAMPLERS.items()
]
COUNT = [
    {"sampler": "uniform", "k": k, "seed": 0, "accumulate": acc, "steps": 2}
    for k, acc in ((1, 1), (2, 1), (4, 1), (4, 3))
]
CONTROL = [{"sampler": "plain", "k": 1, "seed": 0, "accumulate": 1, "steps": 2}]

pytestmark = pytest.mark.slow


def launch(out: Path, devices: int, batch: int, runs: list[dict]) -> list[dict]:
    """Run the worker; returns per rank its results (a list aligned with `runs`)."""
    cmd = [sys.executable, str(WORKER), str(out), str(devices), str(batch), json.dumps(runs)]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(f"{out}.rank{r}.pt", weights_only=False)["results"] for r in range(devices)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    ddp = launch(tmp / "ddp", 2, 8, EQUAL + COUNT + CONTROL)
    single = launch(tmp / "single", 1, 16, EQUAL)[0]
    return ddp, single


def max_depth(subnets: list[str]) -> int:
    return max(sn.Subnet.parse(s)["depth"] for s in subnets)


@pytest.mark.parametrize("index", range(len(EQUAL)), ids=[r["sampler"] for r in EQUAL])
def test_two_processes_train_the_parameters_of_one_on_the_same_global_batch(trained, index):
    (rank0, rank1), single = trained
    a, b, one = rank0[index], rank1[index], single[index]
    run = EQUAL[index]
    assert a["global_step"] == b["global_step"] == one["global_step"] == run["steps"]
    assert a["world_size"] == 2 and one["world_size"] == 1
    # the same global batch and the same subnets at every micro-batch
    micro_batches = run["steps"] * run["accumulate"]
    assert len(a["batches"]) == len(one["batches"]) == micro_batches
    for i in range(micro_batches):
        assert Counter(a["batches"][i] + b["batches"][i]) == Counter(one["batches"][i]), f"micro-batch {i}"
        assert set(a["batches"][i]).isdisjoint(b["batches"][i])
    assert a["subnets"] == b["subnets"] == one["subnets"]
    if run["sampler"] in ("uniform", "sorted"):  # some steps skip the last layer in every subnet
        steps = [a["subnets"][s * 2] + a["subnets"][s * 2 + 1] for s in range(run["steps"])]
        assert any(max_depth(s) < 3 for s in steps), steps
    # the ranks agree bit for bit, and with the single process to float rounding
    assert a["state"].keys() == one["state"].keys()
    for name, value in a["state"].items():
        assert torch.equal(value, b["state"][name]), name
        torch.testing.assert_close(value, one["state"][name], rtol=1e-5, atol=1e-12, msg=name)


def test_one_gradient_reduction_per_optimizer_step_whatever_k_and_accumulate(trained):
    (rank0, rank1), _ = trained
    offset = len(EQUAL)
    for i, run in enumerate(COUNT):
        for rank in (rank0, rank1):
            res = rank[offset + i]
            steps = range(run["steps"])
            # every collective of the process group (sortednet's, DDP's reducer's and Lightning's)
            collectives = [res["dispatched"][s] for s in steps]
            assert collectives == [{"allreduce_": 1}] * run["steps"], collectives
            assert [res["ours"][s] for s in steps] == [1] * run["steps"]
            assert all(res["ddp_hook"][s] == 0 for s in steps)  # DDP's reducer never ran
        # and K subnets x accumulate micro-batches really ran
        assert len(rank0[offset + i]["subnets"][0]) == run["k"]
        assert len(rank0[offset + i]["batches"]) == run["steps"] * run["accumulate"]


def test_the_count_sees_the_reducer_of_plain_ddp(trained):
    """The control for the count above: plain DDP (automatic optimization) shows its reducer's all_reduce."""
    (rank0, _), _ = trained
    res = rank0[len(EQUAL) + len(COUNT)]
    assert all(res["ddp_hook"][s] == 1 for s in range(2))
    assert all(res["dispatched"][s]["allreduce_"] == 1 for s in range(2))


# ---- allreduce_gradients on its own: ranks whose graphs differ neither hang nor desynchronise ----------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uneven_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(4)]
        # rank 0 has a grad for p0 and p1, rank 1 for p1 and p2 (as with rank-dependent LayerDrop); p3: none
        for i in (0, 1) if rank == 0 else (1, 2):
            params[i].grad = torch.full((3,), float(rank + 1) * (i + 1))
        extra = torch.tensor([float(rank)])
        calls = D.allreduce_gradients(params, bucket_bytes=24, extra=extra)  # 2 buckets of 2 params
        torch.save({"grads": [p.grad for p in params], "calls": calls, "extra": extra}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_allreduce_gradients_with_different_unused_parameters_per_rank(tmp_path):
    mp.start_processes(
        _uneven_worker, args=(_free_port(), str(tmp_path / "r")), nprocs=2, start_method="spawn"
    )
    r0, r1 = (torch.load(tmp_path / f"r.{r}") for r in (0, 1))
    for got in (r0, r1):
        assert got["calls"] == 2
        torch.testing.assert_close(got["grads"][0], torch.full((3,), 0.5))  # (1 + 0) / 2
        torch.testing.assert_close(got["grads"][1], torch.full((3,), 3.0))  # (2 + 4) / 2
        torch.testing.assert_close(got["grads"][2], torch.full((3,), 3.0))  # (0 + 6) / 2
        assert got["grads"][3] is None  # no rank had one: AdamW leaves it alone
        torch.testing.assert_close(got["extra"], torch.tensor([0.5]))


# ---- trainer=ddp from the Hydra CLI ----------------------------------------------------------------------------
QUICK = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "callbacks.checkpoint.every_n_train_steps=2",
    "callbacks.progress=null",
    "eval_table.max_batches=2",
    "logger=csv",
    "trainer.log_every_n_steps=1",
]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("sortednet-train")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "sortednet.cli.train"]
    return subprocess.run([*cmd, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def test_cli_ddp_writes_one_run_folder_and_resumes_on_one_process(tmp_path):
    result = cli("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    runs = list((tmp_path / "runs" / "digits_vit").iterdir())
    assert len(runs) == 1, runs  # the second rank ran in the first rank's run folder
    run = runs[0]
    names = {p.name for p in run.iterdir()}
    # rank 0 writes the folder; the second rank only its log file (Lightning gives it hydra.job.name=...process_1)
    assert {".hydra", "checkpoints", "csv", "table.csv", "table.md", "train.log"} <= names, names
    assert [n for n in names if "process" in n] == ["train_ddp_process_1.log"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "last.safetensors"]
    assert result.stdout.count("every sub-model on the validation set") == 1  # the table is printed once
    assert result.stdout.count("run folder:") == 1
    metrics = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/step_loss" in metrics[0]

    nested = sn.load(run / "checkpoints" / "last.safetensors")  # one process, no torch.distributed
    assert nested.metadata["global_step"] == 4 and len(nested.metadata["eval_table"]) == 18
    with torch.no_grad(), nested.use("depth=2,ffn=0.25,heads=2"):
        assert nested(pixel_values=torch.randn(2, 1, 8, 8)).logits.shape == (2, 10)

    again = cli(
        "trainer=cpu",
        "trainer.max_steps=6",
        *QUICK[1:],
        f"ckpt_path={run}/checkpoints/last.ckpt",
        f"hydra.run.dir={tmp_path}/resumed",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-4000:]
    resumed = sn.load(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert resumed.metadata["global_step"] == 6
