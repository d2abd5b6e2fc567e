"""Nested trainings run in their own processes for tests/test_ddp.py (Lightning DDP re-runs this script).

    python tests/distributed_worker.py OUT DEVICES BATCH RUNS_JSON
    torchrun --nproc_per_node=2 tests/distributed_worker.py OUT 2 BATCH RUNS_JSON     (the same, launched by torchrun)

RUNS_JSON is a list of {"sampler", "k", "accumulate", "steps", "seed"} (+ "strategy": "fsdp2_nested", "reshard",
"penalty", "save", "model": "stitched"); each run trains a tiny ViT on the digits data module with `devices` processes (gloo, CPU) and `batch`
samples per process, in float64 (so that AdamW, which turns gradients near zero into steps of size lr, is not
fed float32 rounding: the mean over 16 samples and the mean of two means over 8 differ in the last bits). Every process writes
OUT.rank<R>.pt: per run, the final parameters, the samples of every micro-batch it saw (as keys), the subnets
of every micro-batch, and per optimizer step the collectives dispatched (all sources: ours, DDP's reducer,
Lightning's), sortednet's own count and the calls of a comm hook on DDP's reducer.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from tiny import digits_vit as tiny_vit  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import sortednet as sn  # noqa: E402
from sortednet.data import ImageClassificationDataModule  # noqa: E402
from sortednet.sampling import make_sampler  # noqa: E402
from sortednet.train import Classification, SortedNetModule  # noqa: E402
from sortednet.train import distributed as D  # noqa: E402
from sortednet.train.fsdp import (  # noqa: E402
    NestedFSDPStrategy,
    full_base_state_dict,
    is_sharded_model,
    save_one_file,
)

SPACE = sn.NestingSpace(depth=[1, 2, 3], ffn=[0.25, 1.0], heads=[2, 4])


def to_double(module, args, kwargs):
    return args, {k: v.double() if torch.is_floating_point(v) else v for k, v in kwargs.items()}


def sample_keys(batch: dict[str, torch.Tensor]) -> list[str]:
    """One key per sample: a hash of its pixels (the 1,797 digits images are all different)."""
    pixels = batch["pixel_values"].float().cpu().numpy()
    return [hashlib.sha1(x.tobytes()).hexdigest()[:16] for x in pixels]


class CountCollectives(TorchDispatchMode):
    """Counts the c10d collectives dispatched while active, whoever calls them (sortednet, DDP's reducer from
    its autograd hooks, Lightning): every ProcessGroup call goes through the dispatcher as c10d::<op>."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "c10d":
            self.calls[func.__name__.split(".")[0]] += 1
        return func(*args, **(kwargs or {}))


class Recorder(L.Callback):
    """Per training batch: the samples, the subnets and the all-reduce calls (three ways)."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.subnets: list[list[str]] = []
        self.dispatched: dict[int, Counter[str]] = defaultdict(Counter)  # step -> c10d op -> calls
        self.ours: dict[int, int] = defaultdict(int)
        self.ddp_hook: dict[int, int] = defaultdict(int)
        self._hook_calls = 0

    def on_train_start(self, trainer, module) -> None:
        model = trainer.strategy.model
        if isinstance(model, DistributedDataParallel):
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def counting_hook(state, bucket):
                self._hook_calls += 1
                return allreduce_hook(state, bucket)

            model.register_comm_hook(None, counting_hook)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append(sample_keys(batch))
        self.subnets.append([str(s) for s in module.sampler.sample(module.global_step, module.micro)])
        self._step = module.global_step
        self._ours, self._hooks = D.reductions, self._hook_calls
        self._mode = CountCollectives()
        self._mode.__enter__()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._mode.__exit__(None, None, None)
        self.dispatched[self._step].update(self._mode.calls)
        self.ours[self._step] += D.reductions - self._ours
        self.ddp_hook[self._step] += self._hook_calls - self._hooks


class Penalty(L.Callback):
    """A backward outside training_step, from a callback (as Maestro's group lasso): only layer 0's FFN."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if module.micro == 0:
            weight = module.nested.model.vit.layers[0].mlp.fc1.weight
            module.manual_backward(1e-2 * weight.square().sum())


class Plain(L.LightningModule):
    """The control: the full model with automatic optimization, so DDP's own reducer does the sync."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.micro = 0
        self.sampler = make_sampler("all", SPACE)  # only read by the Recorder

    def training_step(self, batch, batch_idx):
        return self.model(**batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=3e-3)


def strategy(devices: int, run: dict) -> Any:
    if run.get("strategy") == "fsdp2_nested":  # FSDP2 through Lightning's ModelParallelStrategy
        return NestedFSDPStrategy(reshard_after_forward=run.get("reshard", True))
    return "ddp" if devices > 1 else "auto"


def stitched_vits(data: ImageClassificationDataModule) -> sn.StitchedModel:
    """Two tiny ViTs of widths 32 and 48 stitched (least squares on the first 16 validation images, whatever the
    per-process batch), in float64."""
    small = tiny_vit(layers=3, seed=0)
    torch.manual_seed(1)
    config = small.config.to_dict() | {"hidden_size": 48, "intermediate_size": 96}
    large = type(small)(type(small.config).from_dict(config))
    val = data.val_dataloader().dataset
    batch = torch.utils.data.default_collate([val[i] for i in range(16)])
    batch = {"pixel_values": batch["pixel_values"].double()}
    return sn.stitch({"small": small.double(), "large": large.double()}, calibration=[batch])


def train(devices: int, batch: int, run: dict) -> dict:
    data = ImageClassificationDataModule(batch_size=batch, seed=0)
    data.prepare_data()
    data.setup("fit")
    if run.get("model") == "stitched":  # a stitch runs a subset of the parameters, as a depth subnet does
        nested = stitched_vits(data)
        nested.register_forward_pre_hook(to_double, with_kwargs=True)
    else:
        nested = sn.nest(
            tiny_vit().double(), SPACE
        )  # float64 (ModelParallelStrategy refuses precision="64-true")
        nested.model.register_forward_pre_hook(to_double, with_kwargs=True)
    if run["sampler"] == "plain":
        module = Plain(tiny_vit())
    else:
        sampler = make_sampler(run["sampler"], nested.space, k=run["k"], seed=run["seed"])
        module = SortedNetModule(
            nested,
            Classification(),
            sampler,
            accumulate=run["accumulate"],
            optim={"lr": 3e-3, "warmup_steps": 0},
            seed=run["seed"],
        )
    recorder = Recorder()
    trainer = L.Trainer(
        max_steps=run["steps"],
        accelerator="cpu",
        devices=devices,
        strategy=strategy(devices, run),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[recorder, Penalty()] if run.get("penalty") else [recorder],
    )
    trainer.fit(module, datamodule=data)
    if run.get("save"):  # the one-file checkpoint, gathered from the shards under FSDP
        save_one_file(nested, run["save"], {"global_step": trainer.global_step})
    return {
        # every rank's parameters; under FSDP gathered from the shards, on rank 0 only
        "state": full_base_state_dict(nested)
        if is_sharded_model(nested)
        else {k: v.detach().clone() for k, v in nested.base_state_dict().items()},
        "sharded": is_sharded_model(nested),
        "batches": recorder.batches,
        "subnets": recorder.subnets,
        "dispatched": {step: dict(calls) for step, calls in recorder.dispatched.items()},
        "ours": dict(recorder.ours),
        "ddp_hook": dict(recorder.ddp_hook),
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
    }


def main(out: str, devices: int, batch: int, runs: list[dict]) -> None:
    torch.set_num_threads(1)
    results = [train(devices, batch, run) for run in runs]
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
    torch.save({"runs": runs, "results": results}, Path(f"{out}.rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))
