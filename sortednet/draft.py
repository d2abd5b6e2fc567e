"""A sub-model as a plain transformers model whose weights are views of the nested model's (no copy).

Used as a draft for self-speculative decoding (Sorted LLaMA): `full.generate(ids, assistant_model=draft)`.
Each parameter of the draft is an `nn.Parameter` over a slice view of the nested tensor, so it costs no
weight memory and sees every in-place update of the nested weights (an optimizer step, `copy_`); a nested
tensor that is *replaced* (a new Parameter assigned) is no longer seen: build the draft again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import hf
from .export import renumbering
from .heads import head_aliases

ALLOWED = (
    "depth and ffn subnets; fewer heads where the family reads config.head_dim (llama, qwen2, mistral, vit, deit) "
    "and its projections are not fused; no rank"
)


def draft(
    cls: type,
    config: Any,
    family: Any,
    full: Mapping[str, int],
    sizes: Mapping[str, int],
    source: Mapping[str, torch.Tensor],
    name: str,
    factorised: bool = False,
    kept: Sequence[int] | None = None,
) -> nn.Module:
    """The plain model of one subnet (`sizes`) whose parameters are views of the nested tensors `source` (frozen:
    requires_grad False). `name` is the subnet's spelling, for the messages."""

    def refuse(reason: str) -> ValueError:
        return ValueError(f"draft({name}): {reason}; a draft is made of views, allowed: {ALLOWED}")

    if factorised:
        raise refuse("factorised (rank) projections hold U and V, so the dense weight is not a view")
    try:
        family.check_export(full, sizes, cls.__name__)
    except ValueError as err:
        raise refuse(str(err).partition(";")[0]) from None
    aliases = head_aliases(source, sizes.get("depth", full["depth"]))  # head=per_depth: this depth's copy
    small = hf.empty_model(cls, family.sub_config(config, full, sizes, kept))
    renumber = renumbering(family, kept)

    def view(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        parts, axis = family.slices(key, shape, full, sizes)
        index = _one_slice(parts, axis)
        if index is None:
            raise refuse(f"{key} is a fused projection whose blocks shrink apart, so it is not one view")
        stored = renumber(key)
        return source[aliases.get(stored, stored)][index]

    small = hf.fill_model(small, view)
    small.requires_grad_(False)
    return small


def _one_slice(parts: list[tuple[slice, ...]], axis: int) -> tuple[slice, ...] | None:
    """The index tuples as one, when they tile a contiguous range along `axis` (else None)."""
    first = parts[0]
    stop = first[axis].stop
    for part in parts[1:]:
        others = part[:axis] + part[axis + 1 :]
        if part[axis].start != stop or others != first[:axis] + first[axis + 1 :]:
            return None
        stop = part[axis].stop
    return first[:axis] + (slice(first[axis].start, stop),) + first[axis + 1 :]
