"""Plain sub-models out of nested weights: the smaller config, each tensor cut by the family's slicing plan.

`build_submodel` is shared by `NestedModel.extract` (tensors in memory) and `read_submodel` (slices read from a
one-file checkpoint, nothing else read; `sortednet.load_submodel` calls it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from . import depth_order, hf
from .checkpoint import family_of
from .families import Family
from .heads import head_aliases
from .layers import layer_rank
from .spec import NestingSpace, Subnet
from .subnet import shown


def factorized_ranks(
    info: Mapping[str, Mapping[str, Any]],
    full: Mapping[str, int],
    sizes: Mapping[str, int],
    space: NestingSpace,
) -> dict[str, tuple[bool, int]]:
    """{projection name: (transposed, rank)} of a subnet's factorised projections."""
    if not info:
        return {}
    k = sizes.get("rank", full["rank"])
    absolute = isinstance(space.values["rank"][0], int)
    return {
        name: (e["transposed"], min(layer_rank(k, e["full_rank"], full["rank"], absolute), e["cap"]))
        for name, e in info.items()
    }


def build_submodel(
    cls: type,
    config: Any,
    family: Family,
    full: Mapping[str, int],
    sizes: Mapping[str, int],
    read_slice,
    aliases: Mapping[str, str] | None = None,
    factorized: Mapping[str, tuple[bool, int]] | None = None,
    kept: Sequence[int] | None = None,
) -> nn.Module:
    """Build the plain smaller model; `read_slice(key, index)` returns a new tensor for one index tuple.
    A factorised projection's weight is fused: U[rows, :r] @ V[:r, cols] for each of its blocks. `kept`: the
    layers the sub-model runs (default: the first `depth`); its layer j reads layer kept[j]."""
    family.check_export(full, sizes, cls.__name__)
    small = hf.empty_model(cls, family.sub_config(config, full, sizes, kept))
    aliases, factorized = aliases or {}, factorized or {}
    renumber = renumbering(family, kept)

    def fused(prefix: str, idx: tuple[slice, ...]) -> torch.Tensor:
        transposed, r = factorized[prefix]
        rows, cols = (idx[1], idx[0]) if transposed else idx
        w = read_slice(f"{prefix}.U", (rows, slice(0, r))) @ read_slice(f"{prefix}.V", (slice(0, r), cols))
        return w.t().contiguous() if transposed else w

    def read(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        parts, axis = family.slices(key, shape, full, sizes)
        source = renumber(key)
        source = aliases.get(source, source)
        prefix, _, leaf = source.rpartition(".")
        if leaf == "weight" and prefix in factorized:
            tensors = [fused(prefix, idx) for idx in parts]
        else:
            tensors = [read_slice(source, idx) for idx in parts]
        out = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=axis)
        if tuple(out.shape) != shape:
            raise ValueError(f"{key}: slice has shape {tuple(out.shape)}, the sub-model expects {shape}")
        return out.contiguous()  # an in-dim slice of a file view is strided; save_pretrained needs contiguous

    return hf.fill_model(small, read)


def per_layer_refusal(subnet: Subnet, class_name: str) -> str:
    return (
        f"subnet {shown(str(subnet))} gives its layers different sizes, which a plain {class_name} config cannot "
        "say (one size for every layer); sn.load_submodel(path, subnet) gives a runnable sortednet model of it "
        "(the slicing config names it in the checkpoint), or choose a subnet whose layers are alike"
    )


def renumbering(family: Family, kept: Sequence[int] | None) -> Callable[[str], str]:
    """key of the sub-model -> key of the nested model: its layer j is the nested model's layer kept[j]."""
    if kept is None or list(kept) == list(range(len(kept))):
        return lambda key: key

    def source(key: str) -> str:
        match = family.layer_key(key)
        if match is None:
            return key
        return f"{key[: match.start(2)]}{kept[int(match.group(2))]}{key[match.end(2) :]}"

    return source


def read_submodel(
    path: Path,
    meta: Mapping[str, Any],
    subnet: Subnet | str,
    aliases_for: Callable[..., dict[str, str]] | None = None,
) -> nn.Module:
    """The plain transformers model of one subnet of a nested checkpoint, reading only that subnet's slices of
    the file (the model's own head reads [CLS] even where it was trained pooling by mean). `aliases_for(meta,
    config, family, full, sizes, subnet, keys)` adds a kind's own plain key -> stored key map."""
    config = hf.config_from_dict(meta["config"])
    family = family_of(meta)
    full = family.full_sizes(config)
    low_rank = meta.get("low_rank", {})
    if low_rank:
        full["rank"] = max(e["full_rank"] for e in low_rank.values())
    space = NestingSpace.from_dict(meta["space"]).bind(full, lambda d, v: family.resolve(full, d, v), None)
    space.set_ranking(stored_ranking(meta, full["depth"]))
    normal = space.normalize(subnet)
    plan = space.plan(normal)
    if not plan.uniform:
        raise ValueError(per_layer_refusal(normal, hf.model_class(meta["model_class"]).__name__))
    sizes, kept = {**plan.sizes, **(plan.layers[0] if plan.layers else {})}, plan.kept
    with safe_open(str(path), framework="pt") as f:
        aliases = {**meta.get("aliases", {}), **head_aliases(f.keys(), sizes.get("depth", full["depth"]))}
        if aliases_for is not None:
            aliases.update(aliases_for(meta, config, family, full, sizes, normal, f.keys()))
        return build_submodel(
            hf.model_class(meta["model_class"]),
            config,
            family,
            full,
            sizes,
            lambda key, idx: f.get_slice(key)[idx],
            aliases,
            factorized_ranks(low_rank, full, sizes, space),
            kept,
        )


def stored_ranking(meta: Mapping[str, Any], layers: int) -> tuple[int, ...]:
    """The depth order a checkpoint's model was nested with (its header's `depth_order` record)."""
    record = meta.get("depth_order") or {}
    return depth_order.ranking(record.get("ranking"), layers)
