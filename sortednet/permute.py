"""Function-preserving permutations of a plain transformers model: where each unit lives, and applying them.

A *group* is a set of interchangeable units: the FFN neurons of one layer (`layers.3.ffn`), the attention heads
of one layer (`layers.3.heads`; kv heads move with their query heads) or the hidden channels of the whole model
(`hidden`). A *site* is one block of one tensor that a group's permutation reorders. Sites are read from the
declarative `Family` (each projection's output roles and input role), so a new family is covered for free;
hidden channels are found the way `nest()` finds what `hidden` slices (embeddings, norms, projections, heads).
Within a head nothing moves: head_dim stays in order (rotary pairs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .families import Family, family_for
from .layers import SlicedLinear, is_norm
from .nest import NestedModel

PERMUTABLE = ("ffn", "heads", "hidden")
ROLE_GROUP = {"ffn": "ffn", "q": "heads", "kv": "heads", "hidden": "hidden"}


@dataclass(frozen=True)
class Site:
    owner: nn.Module
    attr: str  # the parameter is owner.<attr>
    name: str
    axis: int
    offset: int  # first index of the block along `axis`
    units: int
    size: int = 1  # elements per unit along the axis (head_dim for heads)
    kv: bool = False  # indexed by kv heads rather than query heads
    is_input: bool = False  # the axis is the input of `owner`'s forward (where activations are read)

    @property
    def param(self) -> torch.Tensor:
        return getattr(self.owner, self.attr)

    def block(self) -> torch.Tensor:
        return self.param.detach().narrow(self.axis, self.offset, self.units * self.size)

    def per_unit(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of `values` (shaped like the block) over each unit's elements -> [units]."""
        moved = values.movedim(self.axis, 0).reshape(self.units, self.size, -1)
        return moved.sum(dim=(1, 2))


def target(model: nn.Module, what: str) -> tuple[nn.Module, Family, NestedModel | None]:
    """The transformers model to permute, its family, and the NestedModel around it if there is one. A nested
    model is permuted through its wrappers (they hold the very same parameters), before training."""
    if isinstance(model, NestedModel):
        if model.low_rank_modules():
            raise ValueError(
                f"{what} cannot permute a model nested with rank (its factors come from the weights at nest()); "
                f"reorder the plain model, then nest(model, space)"
            )
        return model.model, model.family, model
    if any(isinstance(m, SlicedLinear) for m in model.modules()):
        raise ValueError(f"{what} takes the NestedModel itself or a plain model, not nested.model")
    if getattr(model, "config", None) is None or not hasattr(model, "base_model"):
        raise ValueError(f"{what} takes a transformers PreTrainedModel; got {type(model).__name__}")
    return model, family_for(model.config), None


def layer_list(model: nn.Module, family: Family) -> list[nn.Module]:
    """Every layer (a LayerList iterates only the active ones)."""
    layers = model.base_model.get_submodule(family.layers)
    return [layers[i] for i in range(len(layers))]


def sites(model: nn.Module, family: Family, dims: Iterable[str]) -> dict[str, list[Site]]:
    """{group: its sites} for the groups of `dims` (a subset of PERMUTABLE)."""
    full = family.full_sizes(model.config)
    dims = set(dims)
    widths = family.role_sizes(full, {})
    units = {  # role -> (units, elements per unit)
        "ffn": (full["ffn"], 1),
        "q": (full["heads"], full["head_dim"]),
        "kv": (full["kv_heads"], full["head_dim"]),
        "hidden": (full["hidden"], 1),
    }
    groups: dict[str, list[Site]] = {}
    projections: set[int] = set()

    def add(i: int, path: str, role: str, attr: str, axis: int, offset: int, is_input: bool) -> None:
        module = _unwrapped(layers[i].get_submodule(path))
        if ROLE_GROUP.get(role) not in dims or getattr(module, attr) is None:
            return
        group = "hidden" if role == "hidden" else f"layers.{i}.{ROLE_GROUP[role]}"
        name = f"layers.{i}.{path}.{attr}"
        site = Site(module, attr, name, axis, offset, *units[role], kv=role == "kv", is_input=is_input)
        groups.setdefault(group, []).append(site)

    layers = layer_list(model, family)
    for i, layer in enumerate(layers):
        for path, proj in family.layer_projections(layer).items():
            wrapped = layer.get_submodule(path)
            projections |= {id(wrapped), id(_unwrapped(wrapped))}
            offset = 0
            for role in proj.out_roles:  # GPT-2's fused c_attn: q, k, v blocks side by side
                add(i, path, role, "weight", proj.out_dim, offset, False)
                add(i, path, role, "bias", 0, offset, False)
                offset += widths[role]
            add(i, path, proj.in_role, "weight", 1 - proj.out_dim, 0, True)
    if "hidden" in dims:
        groups.setdefault("hidden", []).extend(_hidden_sites(model, family, full["hidden"], projections))
        _check_covered(model, groups["hidden"], projections, full["hidden"])
    return groups


def _unwrapped(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, SlicedLinear) else module


def _hidden_sites(model: nn.Module, family: Family, hidden: int, skip: set[int]) -> list[Site]:
    """Every tensor axis outside the layer projections that `hidden` nesting cuts (see NestedModel._inject_hidden)."""
    found: list[Site] = []

    def add(module: nn.Module, attr: str, name: str, axis: int, is_input: bool = False) -> None:
        if getattr(module, attr, None) is not None:
            found.append(Site(module, attr, f"{name}.{attr}".lstrip("."), axis, 0, hidden, is_input=is_input))

    outputs = {id(model.base_model.get_submodule(path)) for path in family.hidden_outputs}
    done: set[int] = set(skip)
    for name, module in model.named_modules():
        if id(module) in done:
            continue
        if id(module) in outputs:  # runs whole and is cut to `hidden`: each of its output features moves
            for sub_name, sub in module.named_modules(prefix=name):
                done.add(id(sub))
                if isinstance(sub, nn.Embedding):
                    if sub.embedding_dim == hidden:
                        add(sub, "weight", sub_name, 1)
                elif isinstance(sub, (nn.Conv2d, nn.Linear)):
                    if sub.weight.shape[0] == hidden:
                        add(sub, "weight", sub_name, 0)
                        add(sub, "bias", sub_name, 0)
                else:  # tokens and position tables (ViT's cls_token, position_embeddings): features last
                    for attr, p in sub.named_parameters(recurse=False):
                        if p.shape[-1] == hidden:
                            add(sub, attr, sub_name, p.dim() - 1)
        elif isinstance(module, nn.Embedding) and module.embedding_dim == hidden:
            add(module, "weight", name, 1)
        elif is_norm(module) and tuple(module.weight.shape) == (hidden,):
            add(module, "weight", name, 0)
            add(module, "bias", name, 0)
        elif isinstance(module, (nn.Linear, Conv1D)):
            out_axis = 1 if isinstance(module, Conv1D) else 0
            if module.weight.shape[1 - out_axis] == hidden:
                add(module, "weight", name, 1 - out_axis, is_input=True)
            if module.weight.shape[out_axis] == hidden:
                add(module, "weight", name, out_axis)
                add(module, "bias", name, 0)
    return found


def _check_covered(model: nn.Module, hidden_sites: list[Site], projections: set[int], hidden: int) -> None:
    """Refuse what would silently break the function: a hidden-size tensor that no rule knows.
    (The family describes every axis of its projections.)"""
    covered = {id(s.param) for s in hidden_sites}
    covered |= {id(p) for m in model.modules() if id(m) in projections for p in m.parameters()}
    for name, p in model.named_parameters():
        if hidden in p.shape and id(p) not in covered:
            raise ValueError(
                f"cannot permute hidden channels of {type(model).__name__}: parameter {name} {tuple(p.shape)} has a "
                f"hidden-size axis no rule covers; leave 'hidden' out of dims (allowed: ffn, heads)"
            )


def unique(group_sites: list[Site]) -> list[Site]:
    """One site per (tensor, axis, block): tied weights (GPT-2's lm_head and wte) are permuted once."""
    seen: set[tuple[int, int, int]] = set()
    out = []
    for s in group_sites:
        key = (id(s.param), s.axis, s.offset)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def kv_order(order: torch.Tensor, group: int) -> torch.Tensor:
    """The kv-head order implied by a query-head order that keeps groups whole."""
    return order[::group] // group


def check_order(key: str, order: Any, n: int, group: int = 1) -> torch.Tensor:
    order = torch.as_tensor(order, dtype=torch.long)
    if order.shape != (n,) or not torch.equal(order.sort().values, torch.arange(n)):
        raise ValueError(f"permutation {key!r} is not a permutation of 0..{n - 1}; allowed: each index once")
    if group > 1 and not torch.equal(
        order.view(-1, group) // group, (order[::group] // group)[:, None].expand(-1, group)
    ):
        raise ValueError(
            f"permutation {key!r} splits a grouped-query attention group; allowed: whole groups of {group} "
            f"consecutive query heads (kv head k owns query heads {group}k..{group}k+{group - 1})"
        )
    return order


def permute_site(site: Site, order: torch.Tensor) -> None:
    index = (order[:, None] * site.size + torch.arange(site.size)).flatten() + site.offset
    with torch.no_grad():
        data = site.param.data
        data.narrow(site.axis, site.offset, site.units * site.size).copy_(
            data.index_select(site.axis, index.to(data.device))
        )


def apply_permutation(model: nn.Module, record: Mapping[str, Any], inverse: bool = False) -> None:
    """Permute `model` in place as `record` (from `reorder`) says; `inverse=True` undoes it.

    Replaying a record on the original model gives the reordered one exactly (the record is the model's
    permutation, stored in the checkpoint metadata under "permutation").
    """
    model, family, _ = target(model, "apply_permutation()")
    full = family.full_sizes(model.config)
    orders = dict(record.get("permutations", {}))
    dims = {("hidden" if k == "hidden" else k.rpartition(".")[2]) for k in orders}
    unknown = dims - set(PERMUTABLE)
    if unknown:
        raise ValueError(
            f"permutation record names {sorted(unknown)}; allowed groups: {', '.join(PERMUTABLE)}"
        )
    groups = sites(model, family, dims)
    missing = set(orders) - set(groups)
    if missing:
        raise ValueError(
            f"permutation record has {sorted(missing)[0]!r}, which {type(model).__name__} does not have; "
            f"it has {', '.join(sorted(groups))}"
        )
    group = full["heads"] // full["kv_heads"]
    for key, raw in orders.items():
        heads = key.endswith(".heads")
        n = full["heads"] if heads else full["ffn"] if key.endswith(".ffn") else full["hidden"]
        order = check_order(key, raw, n, group if heads else 1)
        if inverse:
            order = torch.argsort(order)
        kv = kv_order(order, group) if heads else order
        for site in unique(groups[key]):
            permute_site(site, kv if site.kv else order)
