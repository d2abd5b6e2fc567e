"""Nesting for stage-based vision families (ResNet, ConvNeXt): channels and per-stage depth.

Every Conv2d, Linear, BatchNorm and LayerNorm of the unmodified model is wrapped (sortednet.conv_layers) and
every stage's block list cut to its first k blocks. A wrapper's output width under a channels value is read
from the smaller model itself: the plain class built from the family's smaller config on the meta device
(nothing allocated), so the widths inside a block (a bottleneck's reduction, a depthwise conv) are what
transformers makes of that config and export is exact by construction. Switching sets those ints.

BatchNorm: the running statistics belong to the width they were gathered at. `bn="switchable"` gives each
smaller width its own BatchNorm (Slimmable); `sortednet.calibrate` recomputes a subnet's statistics on
training batches (US-Nets), kept in `bn_stats`, used under `use()` in eval, exported and saved.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import hf
from .conv_layers import (
    ChannelLinear,
    ChannelScale,
    ChannelsFirstNorm,
    SlicedBatchNorm2d,
    SlicedConv2d,
)
from .export import read_submodel
from .families.stages import StageFamily
from .layers import ROLES, LayerList, SlicedNorm, original_key, replace
from .nest import NestedModel
from .spec import NestingSpace, Subnet

KIND = "stages"  # the checkpoint header's `kind` of a nested stage family

BN_MODES = (
    "batch",
    "switchable",
)  # bn=: shared statistics and affine (calibrate them) | one BatchNorm per width
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
STATS_PREFIX = "bn_stats"  # stored calibrated statistics: bn_stats.<i>.<bn module>.running_mean|running_var


def nest_stages(
    model: nn.Module,
    space: NestingSpace,
    family: StageFamily,
    *,
    pooling: str | None = None,
    head: str | None = None,
    bn: str | None = None,
    verify: Any = None,
    ranking: Any = None,
) -> ConvNestedModel:
    """`nest()` for a stage family; every value is checked before the model changes."""
    if pooling or head not in (None, "shared"):
        raise ValueError(
            f"pooling/head options are for transformers; model family {family.name!r} takes neither"
        )
    if space.per_layer:
        raise ValueError(
            f"nesting.per_layer={list(space.per_layer)}: model family {family.name!r} takes one size for every "
            "stage; allowed: nesting.per_layer=null"
        )
    if space.depth_order is not None or ranking is not None:
        raise ValueError(
            f"nesting.depth_order={space.depth_order!r}: model family {family.name!r} keeps the first blocks of "
            "every stage (blocks change shape between stages); allowed: depth_order=prefix"
        )
    bn = bn or "batch"
    if bn not in BN_MODES:
        raise ValueError(f"bn={bn!r} is not known; allowed: {', '.join(BN_MODES)}")
    if bn == "switchable" and "channels" not in space.dims:
        raise ValueError(
            "bn='switchable' keeps a BatchNorm per width: it needs channels in the nesting space"
        )
    full = family.full_sizes(model.config)
    bound = space.bind(full, lambda d, v: family.resolve(full, d, v), None)
    plans = {  # refuses unbuildable widths
        key: plan(type(model), model.config, family, full, dict(zip(PLAN_DIMS, key, strict=True)))
        for key in itertools.product(*(plan_values(bound, full, d) for d in PLAN_DIMS))
    }
    if verify is not None:
        verify(bound.dims)
    nested = ConvNestedModel(model, bound, family, full, plans, {"bn": bn} if bn != "batch" else {})
    bound.set_cost(nested.cost_fn())
    return nested


PLAN_DIMS = ("channels", "ffn")  # the dimensions that change widths: one plan per pair of values


def plan_values(space: NestingSpace, full: Mapping[str, int], dim: str) -> tuple[int | None, ...]:
    if dim in space.dims:
        return tuple(space.absolute(dim))
    return (full.get(dim),)


def plan_key(full: Mapping[str, int], sizes: Mapping[str, int]) -> tuple[int | None, ...]:
    return tuple(sizes.get(d, full.get(d)) for d in PLAN_DIMS)


class _Plan:
    """What one channels (and ffn) value makes of the model: each module's output width, each tensor's size."""

    def __init__(self, outs: dict[str, int], numels: dict[str, int]) -> None:
        self.outs, self.numels = outs, numels


def plan(
    cls: type, config: Any, family: StageFamily, full: Mapping[str, int], sizes: Mapping[str, int | None]
) -> _Plan:
    """Build the plain model of one channels (and ffn) value on the meta device and read its widths."""
    given = {d: v for d, v in sizes.items() if v is not None}
    what = ", ".join(f"{d}={v} (of {full[d]})" for d, v in given.items() if v != full[d]) or "the full size"
    try:
        small = hf.empty_model(cls, family.sub_config(config, full, given))
    except Exception as err:  # e.g. a bottleneck of 0 channels
        line = " ".join(str(err).split())[:200]
        raise ValueError(
            f"{what} gives a {cls.__name__} that cannot be built ({line}); allowed: a wider value"
        ) from None
    outs: dict[str, int] = {}
    for name, module in small.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            width = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            if width < 1:
                raise ValueError(f"{what} leaves {name} with {width} channels; allowed: a wider value")
            outs[name] = width
    return _Plan(outs, {k: v.numel() for k, v in small.state_dict().items()})


class ConvNestedModel(NestedModel):
    """A stage-based vision model with sliceable convolutions, on NestedModel's skeleton (use, extract, save)."""

    kind = KIND
    generates = False

    def __init__(
        self,
        model: nn.Module,
        space: NestingSpace,
        family: StageFamily,
        full: Mapping[str, int],
        plans: Mapping[tuple[int | None, ...], _Plan],
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self._plans = dict(plans)  # read by _inject, which NestedModel.__init__ calls
        self.bn_stats: dict[Subnet, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        super().__init__(model, space, family, full, options)

    def _full_roles(self) -> dict[str, int]:
        return {role: 0 for role in ROLES}  # the stage wrappers read their widths from `out`, not the state

    # ---- injection ----------------------------------------------------------------------------
    def _inject(self) -> None:
        model, family = self.model, self.family
        base_path = next(n for n, m in model.named_modules() if m is model.base_model)
        self._stages_path = ".".join(p for p in (base_path, family.stages) if p)
        self.stage_blocks: list[LayerList] = []
        for stage in model.get_submodule(self._stages_path):
            blocks = LayerList(getattr(stage, family.blocks))
            setattr(stage, family.blocks, blocks)
            self.stage_blocks.append(blocks)
            for block in blocks.every_layer():
                for name in family.block_scales:
                    if isinstance(block._parameters.get(name), nn.Parameter):
                        self._hooks.append(ChannelScale(name).attach(block))
        self.depths = [len(blocks) for blocks in self.stage_blocks]
        private = self.options.get("bn") == "switchable"
        self.outs: list[tuple[str, nn.Module]] = []  # wrappers whose output width is set on a switch
        self.batch_norms: list[tuple[str, SlicedBatchNorm2d]] = []
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.Conv2d):
                wrapped = SlicedConv2d(module)
                self.outs.append((name, wrapped))
            elif isinstance(module, nn.Linear):
                wrapped = ChannelLinear(module)
                self.outs.append((name, wrapped))
            elif isinstance(module, nn.BatchNorm2d):
                widths = sorted(
                    {self._plans[c].numels[f"{name}.weight"] for c in self._plans} - {module.num_features}
                )
                wrapped = SlicedBatchNorm2d(module, tuple(widths) if private else ())
                self.batch_norms.append((name, wrapped))
            elif isinstance(module, nn.LayerNorm):
                first = getattr(module, "data_format", "channels_last") == "channels_first"
                wrapped = ChannelsFirstNorm(module) if first else SlicedNorm(module)
            else:
                continue
            replace(model, name, wrapped)
        self._check_covered()
        self.train(model.training)  # the new wrappers take the model's mode (BatchNorm reads it)

    def _check_covered(self) -> None:
        """Refuse a model with a parameter some subnet shrinks that no wrapper slices (it would break the
        subnet); parameters every subnet keeps whole (Swin's relative position tables under ffn) are fine."""
        wrapped = set()
        for module in self.model.modules():
            if isinstance(
                module, (SlicedConv2d, ChannelLinear, ChannelsFirstNorm, SlicedNorm, SlicedBatchNorm2d)
            ):
                wrapped.update(id(p) for p in module.parameters())
        scales = set(self.family.block_scales)
        for name, param in self.model.named_parameters():
            shrinks = any(
                p.numels.get(original_key(name), param.numel()) != param.numel() for p in self._plans.values()
            )
            if shrinks and id(param) not in wrapped and name.rpartition(".")[2] not in scales:
                raise ValueError(
                    f"model family {self.family.name!r}: parameter {original_key(name)} is outside every sliced "
                    "module; declare it (block_scales) or nest a model without it"
                )

    # ---- switching ----------------------------------------------------------------------------
    def _switch_plan(self, subnet: Subnet) -> Any:
        """Each wrapper's output width and each stage's blocks that run: ints and references only."""
        sizes = self.sizes(subnet)
        plan = self._plans[plan_key(self.full, sizes)]
        outs = [plan.outs[name] for name, _ in self.outs]
        blocks = [
            None if sizes["depth"] >= depth else tuple(stage.every_layer()[: sizes["depth"]])
            for stage, depth in zip(self.stage_blocks, self.depths, strict=True)
        ]
        return subnet, outs, blocks

    def _switch(self, plan: Any) -> None:
        subnet, outs, blocks = plan
        for (_, module), width in zip(self.outs, outs, strict=True):
            module.__dict__["out"] = width
        for stage, active in zip(self.stage_blocks, blocks, strict=True):
            stage.active = active
        stats = self.bn_stats.get(subnet)
        for name, bn in self.batch_norms:
            bn.stats = stats.get(name) if stats is not None else None

    def layer_host(self) -> None:
        return None  # blocks change shape between stages: no per-layer influence

    # ---- sizes --------------------------------------------------------------------------------
    def cost_fn(self):
        """Exact parameter count of each subnet: its plain model's tensors (blocks beyond its depth left out)."""
        block = re.compile(
            rf"^{re.escape(self._stages_path)}\.(\d+)\.{re.escape(self.family.blocks)}\.(\d+)\."
        )
        params = {original_key(k) for k, _ in self.model.named_parameters()}
        tables = {}
        for plan_id, plan in self._plans.items():
            shared, blocks = 0, {}
            for key, n in plan.numels.items():
                if key not in params:  # buffers are not parameters
                    continue
                m = block.match(key)
                if m:
                    blocks[(int(m[1]), int(m[2]))] = blocks.get((int(m[1]), int(m[2])), 0) + n
                else:
                    shared += n
            tables[plan_id] = (shared, blocks)

        def cost(sizes):
            n = len(next(iter(sizes.values())))
            out = []
            for row in range(n):
                row_sizes = {d: int(v[row]) for d, v in sizes.items()}
                k = row_sizes.get("depth", self.full["depth"])
                shared, blocks = tables[plan_key(self.full, row_sizes)]
                out.append(shared + sum(v for (_, j), v in blocks.items() if j < k))
            return np.asarray(out, dtype=np.float64)

        return cost

    # ---- BatchNorm statistics -----------------------------------------------------------------
    def bn_aliases(self, subnet: Subnet) -> dict[str, str]:
        """Plain sub-model key -> stored key: its width's private BatchNorm, its calibrated statistics."""
        sizes = self.sizes(subnet)
        return stats_aliases(
            [n for n, _ in self.batch_norms],
            self._plans[plan_key(self.full, sizes)].numels,
            self.full_widths(),
            self.options.get("bn") == "switchable",
            self.calibrated_index().get(str(subnet)),
        )

    def full_widths(self) -> dict[str, int]:
        return {name: bn.base_layer.num_features for name, bn in self.batch_norms}

    def calibrated_index(self) -> dict[str, int]:
        return {str(s): i for i, s in enumerate(self.bn_stats)}

    def stats_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for i, stats in enumerate(self.bn_stats.values()):
            for name, (mean, var) in stats.items():
                tensors[f"{STATS_PREFIX}.{i}.{name}.running_mean"] = mean
                tensors[f"{STATS_PREFIX}.{i}.{name}.running_var"] = var
        return tensors

    def read_stats(self, get: Any, meta: Mapping[str, Any], keys: Any) -> None:
        """Fill `bn_stats` from a checkpoint: `get(key)` reads a stored tensor."""
        self.bn_stats.clear()
        for i, text in enumerate(meta.get("bn_calibrated") or []):
            marker = f"{STATS_PREFIX}.{i}."
            names = {k[len(marker) :].rpartition(".")[0] for k in keys if k.startswith(marker)}
            self.bn_stats[self.space.normalize(text)] = {
                n: (get(f"{marker}{n}.running_mean"), get(f"{marker}{n}.running_var")) for n in sorted(names)
            }
        self.activate(self._active)

    # ---- export -------------------------------------------------------------------------------
    def aliases(self, subnet: Subnet, keys: Any) -> dict[str, str]:
        return self.bn_aliases(subnet)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {**self.base_state_dict(), **self.stats_tensors()}

    def header(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {**super().header(metadata), "bn_calibrated": [str(s) for s in self.bn_stats]}


def stats_aliases(
    names: list[str],
    numels: Mapping[str, int],
    full_widths: Mapping[str, int],
    switchable: bool,
    calibrated: int | None,
) -> dict[str, str]:
    """Plain sub-model key -> stored key for the BatchNorms of one subnet (numels: its plan's tensor sizes)."""
    aliases = {}
    for name in names:
        width = numels.get(f"{name}.weight")
        if width is None:  # in a block beyond the subnet's depth
            continue
        if switchable and width != full_widths[name]:
            for p in BN_PARAMS:
                aliases[f"{name}.{p}"] = f"{name}.private.{width}.{p}"
        if calibrated is not None:
            for p in ("running_mean", "running_var"):
                aliases[f"{name}.{p}"] = f"{STATS_PREFIX}.{calibrated}.{name}.{p}"
    return aliases


def file_aliases(
    meta: Mapping[str, Any],
    config: Any,
    family: StageFamily,
    full: Mapping[str, int],
    sizes: Mapping[str, int],
    subnet: Subnet,
    keys: Any,
) -> dict[str, str]:
    """`stats_aliases` for `load_submodel`: from a checkpoint's header and keys, without the nested model."""
    cls = hf.model_class(meta["model_class"])
    numels = plan(cls, config, family, full, sizes).numels
    whole = plan(cls, config, family, full, {}).numels
    names = [k[: -len(".running_var")] for k in whole if k.endswith(".running_var")]
    calibrated = {text: i for i, text in enumerate(meta.get("bn_calibrated") or [])}
    return stats_aliases(
        names,
        numels,
        {n: whole[f"{n}.weight"] for n in names},
        (meta.get("options") or {}).get("bn") == "switchable",
        calibrated.get(str(subnet)),
    )


def read_stage_submodel(path: Path, meta: Mapping[str, Any], subnet: Subnet | str) -> nn.Module:
    """The plain transformers model of one subnet of a stage-family checkpoint (its own BatchNorm statistics)."""
    return read_submodel(path, meta, subnet, aliases_for=file_aliases)
