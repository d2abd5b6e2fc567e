"""Exact parameter counts for every subnet of a space, vectorised (no model built per subnet).

A subnet holds the shared tensors (embeddings, norms, heads) and those of its first `depth` layers. A
sliced projection in a layer holds out x in (+ out for its bias), each side at its role's active width.
Any other tensor shrinks only with the hidden size d, along the axes its wrapper slices: with k such axes
it holds (numel / D^k) * d^k. Coefficients are read once from the nested model.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from torch import nn

from .layers import SlicedEmbedding, SlicedLinear, SlicedNorm, SlicedOutput


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


def param_cost_fn(nested):
    """Cost function of a NestedModel's space: exact parameter count of each subnet."""
    family, full, model = nested.family, nested.full, nested.model
    hidden = full["hidden"]
    layers = model.base_model.get_submodule(family.layers)
    layer = layers[0]
    axes = hidden_axes(model, hidden) if "hidden" in nested.space.dims else {}
    projections, projected = [], set()
    for path, proj in family.projections.items():
        module = layer.get_submodule(path)
        projections.append((proj.out_roles, proj.in_role, module.bias is not None))
        projected.update(id(p) for p in module.parameters())
    layer_rest = _terms([p for p in layer.parameters() if id(p) not in projected], axes, hidden)
    in_layers = {id(p) for p in layers.parameters()}
    shared = _terms([p for p in model.parameters() if id(p) not in in_layers], axes, hidden)

    def cost(sizes):
        n = len(next(iter(sizes.values())))
        s = {
            d: np.asarray(sizes[d], dtype=np.int64) if d in sizes else np.full(n, full[d], np.int64)
            for d in full
        }
        roles = family.role_sizes(full, s)
        d = s["hidden"]
        per_layer = sum(c * d**k for k, c in layer_rest.items())
        for out_roles, in_role, has_bias in projections:
            width = sum(roles[r] for r in out_roles)
            per_layer = per_layer + width * roles[in_role] + (width if has_bias else 0)
        total = sum(c * d**k for k, c in shared.items()) + s["depth"] * per_layer
        return np.asarray(total, dtype=np.float64)

    return cost
