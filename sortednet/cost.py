"""Exact parameter counts for every subnet of a space, vectorised (no model built per subnet).

A subnet holds the shared tensors (embeddings, norms, heads) and those of the `depth` layers it keeps
(sortednet.depth_order: the first `depth` unless the space orders them otherwise); with a
head per depth (sortednet.heads), only its own depth's head. A
sliced projection in a layer holds out x in (+ out for its bias), each side at its role's active width.
Any other tensor shrinks only with the hidden size d, along the axes its wrapper slices: with k such axes
it holds (numel / D^k) * d^k. Coefficients are read once from the nested model.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from torch import nn

from .depth_order import position
from .heads import DepthHeads
from .layers import LowRankLinear, SlicedEmbedding, SlicedLinear, SlicedNorm, SlicedOutput


def hidden_axes(model: nn.Module, hidden: int) -> dict[int, int]:
    """id(parameter) -> how many of its axes follow the hidden size (from the wrappers that slice it)."""
    axes: dict[int, int] = {}
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if isinstance(module, (SlicedEmbedding, SlicedNorm)):
            for p in base.parameters():
                axes[id(p)] = 1
        elif isinstance(module, SlicedOutput):
            for p in base.parameters():
                axes[id(p)] = 1  # one output-feature axis per tensor (conv out channels, token vectors)
        elif (
            isinstance(module, SlicedLinear)
            and module.in_role == "hidden"
            and module.out_roles[0] in ("hidden", "fixed")
        ):
            k_weight = 1 + (module.out_roles == ("hidden",))
            axes[id(base.weight)] = k_weight
            if base.bias is not None:
                axes[id(base.bias)] = int(module.out_roles == ("hidden",))
    return axes


def _terms(params, axes: dict[int, int], hidden: int) -> dict[int, int]:
    terms: dict[int, int] = defaultdict(int)
    for p in params:
        k = axes.get(id(p), 0)
        terms[k] += p.numel() // hidden**k
    return dict(terms)


def _ranks(k: np.ndarray, module: LowRankLinear) -> np.ndarray:
    """layers.layer_rank, vectorised over the space's rank sizes k, with the module's cut applied."""
    if module.absolute:
        r = np.minimum(k, module.full_rank)
    else:
        r = np.clip(np.round(k * module.full_rank / module.max_rank), 1, module.full_rank)
    return np.minimum(r, module.cap).astype(np.int64)


def _coefficients(nested):
    """What the exact count is made of: per layer (the terms outside its projections, its projections), the
    shared terms (and per depth, a head's) and the hidden size."""
    family, full, model = nested.family, nested.full, nested.model
    hidden = full["hidden"]
    layers = model.base_model.get_submodule(family.layers)
    axes = hidden_axes(model, hidden) if "hidden" in nested.space.dims else {}
    per_layer = []  # per layer: (rest terms, [(out_roles, in_role, has_bias, LowRankLinear | None)])
    for layer in layers.every_layer():
        projections, projected = [], set()
        for path, proj in family.layer_projections(layer).items():
            module = layer.get_submodule(path)
            low_rank = module if isinstance(module, LowRankLinear) else None
            projections.append((proj.out_roles, proj.in_role, module.base_layer.bias is not None, low_rank))
            projected.update(id(p) for p in module.parameters())
        rest = _terms([p for p in layer.parameters() if id(p) not in projected], axes, hidden)
        per_layer.append((rest, projections))
    in_layers = {id(p) for p in layers.parameters()}
    heads: dict[int, list] = defaultdict(list)  # per-depth heads: depth -> its head's parameters
    for module in model.modules():
        if isinstance(module, DepthHeads):
            for depth in nested.space.absolute("depth"):
                heads[depth].extend(module.head(depth).parameters())
    in_heads = {id(p) for params in heads.values() for p in params}
    shared = _terms([p for p in model.parameters() if id(p) not in in_layers | in_heads], axes, hidden)
    head_terms = {depth: _terms(params, axes, hidden) for depth, params in heads.items()}
    return per_layer, shared, head_terms


def _layer_count(rest, projections, roles, d, rank):
    """One layer's parameters at its role widths (vectorised over subnets: arrays, or ints)."""
    count = sum(c * d**k for k, c in rest.items())
    for out_roles, in_role, has_bias, low_rank in projections:
        width, fan_in = sum(roles[r] for r in out_roles), roles[in_role]
        dense = width * fan_in
        if low_rank is not None:
            dense = np.minimum(dense, _ranks(rank, low_rank) * (width + fan_in))
        count = count + dense + (width if has_bias else 0)
    return count


def param_cost_fn(nested):
    """Cost function of a NestedModel's space: exact parameter count of each uniform subnet, vectorised. A
    factorised projection counts min(r (out + in), out x in): its factors, or the dense weight when smaller."""
    family, full = nested.family, nested.full
    per_layer, shared, head_terms = _coefficients(nested)
    place = position(nested.ranking)  # layer i runs at depth k when place[i] < k

    def cost(sizes):
        n = len(next(iter(sizes.values())))
        s = {
            d: np.asarray(sizes[d], dtype=np.int64) if d in sizes else np.full(n, full[d], np.int64)
            for d in full
        }
        roles = family.role_sizes(full, s)
        d = s["hidden"]
        total = sum(c * d**k for k, c in shared.items()) + np.zeros(n, dtype=np.int64)
        for depth, terms in head_terms.items():
            total = total + np.where(s["depth"] == depth, sum(c * d**k for k, c in terms.items()), 0)
        for index, (rest, projections) in enumerate(per_layer):
            count = _layer_count(rest, projections, roles, d, s.get("rank")) + np.zeros(n, dtype=np.int64)
            total = total + np.where(s["depth"] > place[index], count, 0)
        return np.asarray(total, dtype=np.float64)

    return cost


def member_cost_fn(nested):
    """The exact parameter count of any member from its plan (kept layers, each with its own sizes)."""
    family, full = nested.family, nested.full
    per_layer, shared, head_terms = _coefficients(nested)

    def cost(plan) -> float:
        sizes = {**full, **plan.sizes}
        d = sizes["hidden"]
        total = sum(c * d**k for k, c in shared.items())
        total += sum(c * d**k for k, c in head_terms.get(len(plan.kept), {}).items())
        for j, i in enumerate(plan.kept):
            layer = {**sizes, **plan.layers[j]}
            roles = family.role_sizes(full, layer)
            rank = np.asarray(layer.get("rank", full.get("rank", 0)))
            total += int(_layer_count(*per_layer[i], roles, d, rank))
        return float(total)

    return cost
