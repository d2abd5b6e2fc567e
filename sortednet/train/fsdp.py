"""FSDP2 for nested models: each transformer layer is one `fully_shard` unit, the rest is the root's.

    trainer = L.Trainer(strategy="fsdp2_nested", accelerator="gpu", devices=8, precision="bf16-mixed")
    trainer.fit(SortedNetModule(nested, ...))       # its configure_model() calls shard_nested()

Slices work on sharded parameters unchanged: before a unit's forward FSDP2 all-gathers its parameters and
registers the unsharded tensors on the modules, so `SlicedLinear` reads `W[:o, :i]` of the full weight as
usual (the unsharded tensors are plain leaf Parameters, so the slice-aware path of slice_grad.py applies: the
slice's gradient is added into the unsharded parameter's `.grad`), and FSDP2 reduce-scatters that `.grad` into
the sharded `.grad` after the unit's backward. A depth subnet never calls the layers it skips, so their units
neither all-gather nor reduce-scatter; every rank trains the same subnets (samplers are seeded by step, not
rank), so every rank skips the same collectives and none waits for one that never comes.

Unlike DDP, FSDP reduces per backward, not per optimizer step (that is what keeps every gradient sharded), and
every subnet's forward and backward all-gather the units it runs: K subnets cost K x (2 all-gathers + 1
reduce-scatter) of the layers they use. `reshard_after_forward=False` keeps the gathered layers from the
forward to the backward (one all-gather fewer per subnet, more memory).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn

from ..checkpoint import write
from ..nest import NestedModel
from .distributed import is_sharded

STRATEGY = "fsdp2_nested"


def layer_units(nested: NestedModel) -> list[nn.Module]:
    """Every transformer layer of the nested model (int indexing sees all of them, active or not)."""
    layers = nested.model.base_model.get_submodule(nested.family.layers)
    return [layers[i] for i in range(len(layers))]


def is_sharded_model(module: nn.Module) -> bool:
    return any(is_sharded(p) for p in module.parameters())


def shard_nested(
    nested: NestedModel,
    mesh: Any = None,
    reshard_after_forward: bool = True,
    mp_policy: Any = None,
) -> NestedModel:
    """`fully_shard` each layer, then the NestedModel itself (embeddings, final norm, head); in place."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    options: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    options["mp_policy"] = mp_policy or MixedPrecisionPolicy()
    for layer in layer_units(nested):
        fully_shard(layer, **options)
    fully_shard(nested, **options)
    return nested


class NestedFSDPStrategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as plain FSDP2: data parallel over all processes, no tensor parallel.

    `SortedNetModule.configure_model` shards the nested model with `shard_nested` under this strategy (and
    under any ModelParallelStrategy whose mesh has a "data_parallel" dimension). Checkpoints are one file
    (the full state gathered on rank 0), so they resume under DDP or one process too.
    """

    def __init__(
        self, reshard_after_forward: bool = True, param_dtype: str | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("save_distributed_checkpoint", False)
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)
        self.reshard_after_forward = reshard_after_forward
        self.param_dtype = param_dtype  # e.g. "bfloat16": gather and compute in bf16, reduce in fp32

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def mp_policy(self) -> Any:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        if self.param_dtype is None:
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=getattr(torch, self.param_dtype), reduce_dtype=torch.float32)


if STRATEGY not in StrategyRegistry:
    StrategyRegistry.register(
        STRATEGY, NestedFSDPStrategy, description="FSDP2 fully_shard per transformer layer (sortednet)"
    )


def configure_sharding(module: Any) -> None:
    """For `LightningModule.configure_model`: shard `module.nested` under a ModelParallelStrategy, once."""
    strategy = module.trainer.strategy
    if not isinstance(strategy, ModelParallelStrategy) or is_sharded_model(module.nested):
        return
    if not isinstance(module.nested, NestedModel):
        raise ValueError(
            f"trainer=fsdp shards a nested model's layers; a {type(module.nested).__name__} is not one: "
            "allowed: trainer=ddp or cpu"
        )
    mesh = module.device_mesh
    mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
    if isinstance(strategy, NestedFSDPStrategy):
        shard_nested(module.nested, mesh, strategy.reshard_after_forward, strategy.mp_policy())
    else:
        shard_nested(module.nested, mesh)


# ---- one-file checkpoint of a sharded model ---------------------------------------------------------------------
def full_base_state_dict(nested: NestedModel) -> dict[str, torch.Tensor]:
    """The full tensors under the original model's keys, on rank 0's CPU (other ranks get {}); a collective
    (one all-gather per sharded tensor): every rank calls it. Tied weights stay one tensor."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    full: dict[str, torch.Tensor] = {}
    first: dict[int, str] = {}
    for key, value in nested.base_state_dict().items():
        if id(value) in first:  # a tied weight: the same (sharded) tensor under two keys
            if rank == 0:
                full[key] = full[first[id(value)]]
            continue
        first[id(value)] = key
        tensor = value.full_tensor() if is_sharded(value) else value
        if rank == 0:
            full[key] = tensor.detach().cpu()
    return full


def save_one_file(
    nested: NestedModel, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> None:
    """`nested.save(path, metadata)` called by every rank of a run, sharded or not: rank 0 writes the file."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if is_sharded_model(nested):
        tensors = full_base_state_dict(nested)
        if rank == 0:
            write(path, tensors, nested.header(metadata))
    elif rank == 0:
        nested.save(str(path), metadata=metadata)
