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
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from . import hf
from .checkpoint import write
from .conv_layers import (
    ChannelLinear,
    ChannelScale,
    ChannelsFirstNorm,
    SlicedBatchNorm2d,
    SlicedConv2d,
    StageBlocks,
)
from .export import build_submodel
from .families.stages import StageFamily
from .layers import NestState, SlicedNorm
from .nest import NestedModel, original_key
from .spec import NestingSpace, Subnet

BN_MODES = (
    "batch",
    "switchable",
)  # bn=: shared statistics and affine (calibrate them) | one BatchNorm per width
BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
STATS_PREFIX = "bn_stats"  # stored calibrated statistics: bn_stats.<i>.<bn module>.running_mean|running_var


def nest_stages(
    model: nn.Module, space: NestingSpace, family: StageFamily, bn: str | None = None
) -> ConvNestedModel:
    """`nest()` for a stage family; every value is checked before the model changes."""
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
    """A stage-based vision model with sliceable convolutions; the NestedModel interface (use, extract, save)."""

    def __init__(
        self,
        model: nn.Module,
        space: NestingSpace,
        family: StageFamily,
        full: Mapping[str, int],
        plans: Mapping[tuple[int | None, ...], _Plan],
        options: Mapping[str, Any] | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self.model, self.space, self.family, self.full = model, space, family, dict(full)
        self.options = dict(options or {})
        self.state = NestState({r: 0 for r in ("depth", "hidden", "q", "kv", "ffn", "rank")})
        self.metadata: dict[str, Any] = {}
        self.bn_stats: dict[Subnet, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._plans = dict(plans)
        self._switch_cache: dict[Any, tuple[Subnet, list[int], list[int]]] = {}
        base_path = next(n for n, m in model.named_modules() if m is model.base_model)
        self._stages_path = ".".join(p for p in (base_path, family.stages) if p)
        self._sequential = False
        self._inject()
        self._active = space.normalize(space.largest)

    # ---- injection ----------------------------------------------------------------------------
    def _inject(self) -> None:
        model, family = self.model, self.family
        stages = model.get_submodule(self._stages_path)
        self.stage_blocks: list[StageBlocks] = []
        self.depths = [len(getattr(stage, family.blocks)) for stage in stages]
        for stage in stages:
            blocks = getattr(stage, family.blocks)
            self._sequential = isinstance(blocks, nn.Sequential)
            wrapped = StageBlocks(blocks)
            setattr(stage, family.blocks, wrapped)
            self.stage_blocks.append(wrapped)
            for block in wrapped.every_block():
                for name in family.block_scales:
                    if isinstance(block._parameters.get(name), nn.Parameter):
                        block.register_forward_pre_hook(ChannelScale(name))
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
            _replace(model, name, wrapped)
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

    def unnest(self) -> nn.Module:
        self.activate(self.space.largest)
        for name, module in list(self.model.named_modules()):
            if isinstance(module, StageBlocks):
                _replace(self.model, name, module.unnested(self._sequential))
                for block in module.every_block():
                    block._forward_pre_hooks.clear()
            elif hasattr(module, "base_layer"):
                _replace(self.model, name, module.base_layer)
        return self.model

    # ---- switching ----------------------------------------------------------------------------
    def activate(self, subnet: Subnet | str) -> Subnet:
        """Sets each wrapper's output width and each stage's depth: ints only, no weight copied."""
        cached = self._switch_cache.get(subnet)
        if cached is None:
            normal = self.space.normalize(Subnet.parse(subnet))
            sizes = self.sizes(normal)
            plan = self._plans[plan_key(self.full, sizes)]
            outs = [plan.outs[name] for name, _ in self.outs]
            depths = [min(sizes["depth"], d) for d in self.depths]
            cached = self._switch_cache[subnet] = (normal, outs, depths)
        self._active, outs, depths = cached
        for (_, module), width in zip(self.outs, outs, strict=True):
            module.__dict__["out"] = width
        for blocks, depth in zip(self.stage_blocks, depths, strict=True):
            blocks.__dict__["depth"] = depth
        stats = self.bn_stats.get(self._active)
        for name, bn in self.batch_norms:
            bn.stats = stats.get(name) if stats is not None else None
        return self._active

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

    def apply_low_rank_info(self, info: Mapping[str, Mapping[str, Any]]) -> None:
        if info:
            raise ValueError(f"model family {self.family.name!r} has no factorised projections")

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
    def extract_plain(self, subnet: Subnet | str) -> nn.Module:
        normal = self.space.normalize(Subnet.parse(subnet))
        source = {**self.base_state_dict(), **self.stats_tensors()}
        return build_submodel(
            type(self.model),
            self.model.config,
            self.family,
            self.full,
            self.space.resolve(normal),
            lambda key, idx: source[key][idx].clone(memory_format=torch.contiguous_format),
            self.bn_aliases(normal),
        )

    def draft(self, subnet: Subnet | str) -> nn.Module:
        raise ValueError(
            f"draft() is for language models; model family {self.family.name!r} does not generate"
        )

    def header(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        calibrated = [str(s) for s in self.bn_stats]
        return {**super().header(metadata), "bn_calibrated": calibrated}

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
        write(path, {**self.base_state_dict(), **self.stats_tensors()}, self.header(metadata))


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


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, attr, new)


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
