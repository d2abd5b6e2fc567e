"""Exact parameter counts for every subnet of a space, vectorised (no model built per subnet).

A subnet's parameters are the shared ones (embeddings, final norm, head) plus depth times one layer's;
one layer's are its sliced projections (out width x in width + bias) plus the rest (norms), which do not
change with depth, heads or FFN size. Coefficients are read once from the model's first layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import nn

from .families import Family


def param_cost_fn(model: nn.Module, family: Family, full: Mapping[str, int]):
    layers = model.base_model.get_submodule(family.layers)
    layer = layers[0]
    projections = []  # (out_roles, in_role, has_bias)
    projected = 0
    for path, proj in family.projections.items():
        module = layer.get_submodule(path)
        projections.append((proj.out_roles, proj.in_role, getattr(module, "bias", None) is not None))
        projected += sum(p.numel() for p in module.parameters())
    layer_rest = sum(p.numel() for p in layer.parameters()) - projected
    in_layers = sum(p.numel() for p in layers.parameters())
    shared = sum(p.numel() for p in model.parameters()) - in_layers

    def cost(sizes: Mapping[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(sizes.values())))
        s = {
            d: np.asarray(sizes[d], dtype=np.int64) if d in sizes else np.full(n, full[d], np.int64)
            for d in full
        }
        roles = family.role_sizes(full, s)
        per_layer = np.full(n, layer_rest, dtype=np.int64)
        for out_roles, in_role, has_bias in projections:
            width = sum(roles[r] for r in out_roles)
            per_layer = per_layer + width * roles[in_role] + (width if has_bias else 0)
        return (shared + s["depth"] * per_layer).astype(np.float64)

    return cost
