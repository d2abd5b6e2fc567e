"""A sub-model as a plain transformers model whose weights are views of the nested model's (no copy).

Used as a draft for self-speculative decoding (Sorted LLaMA): `full.generate(ids, assistant_model=draft)`.
Each parameter of the draft is an `nn.Parameter` over a slice view of the nested tensor, so it costs no
weight memory and sees every in-place update of the nested weights (an optimizer step, `copy_`); a nested
tensor that is *replaced* (a new Parameter assigned) is no longer seen: build the draft again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from . import hf
from .heads import head_aliases
from .spec import Subnet

if TYPE_CHECKING:
    from .nest import NestedModel

ALLOWED = (
    "depth and ffn subnets; fewer heads where the family reads config.head_dim (llama, qwen2, mistral, vit, deit) "
    "and its projections are not fused; no rank"
)


def draft(nested: NestedModel, subnet: Subnet | str) -> nn.Module:
    """The plain model of `subnet` sharing storage with `nested` (frozen: requires_grad False, eval mode)."""
    subnet = nested.space.normalize(Subnet.parse(subnet))
    family, full = nested.family, nested.full
    sizes = nested.space.resolve(subnet)
    cls = type(nested.model)

    def refuse(reason: str) -> ValueError:
        return ValueError(f"draft({subnet}): {reason}; a draft is made of views, allowed: {ALLOWED}")

    if nested.low_rank_modules():
        raise refuse("factorised (rank) projections hold U and V, so the dense weight is not a view")
    try:
        family.check_export(full, sizes, cls.__name__)
    except ValueError as err:
        raise refuse(str(err).partition(";")[0]) from None
    source = nested.base_state_dict()
    aliases = head_aliases(source, sizes.get("depth", full["depth"]))  # head=per_depth: this depth's copy
    small = hf.empty_model(cls, family.sub_config(nested.model.config, full, sizes))

    def view(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        parts, axis = family.slices(key, shape, full, sizes)
        index = _one_slice(parts, axis)
        if index is None:
            raise refuse(f"{key} is a fused projection whose blocks shrink apart, so it is not one view")
        return source[aliases.get(key, key)][index]

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
