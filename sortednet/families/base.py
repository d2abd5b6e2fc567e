"""The Family adapter: a declarative description of one HF architecture.

It says where the layer list lives (inside `model.base_model`), which projections in a layer are sliced
and along which roles, which config keys hold each size, and how to write the smaller config on export.
The slicing plan it gives serves both `extract()` (tensors in memory) and `load_submodel()` (slices read
from the one-file checkpoint), so the two can never disagree.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..spec import Value

DIM_NAMES = {
    "rank": "rank (of the largest factorised projection)",
    "depth": "layers",
    "heads": "attention heads",
    "ffn": "FFN neurons (intermediate size)",
    "hidden": "hidden size",
}
HEAD_DIM_FAMILIES = "llama, qwen2, mistral, vit, deit"


@dataclass(frozen=True)
class Projection:
    out_roles: tuple[str, ...]  # one role per output block (GPT-2's fused c_attn: q, kv, kv)
    in_role: str
    out_dim: int = 0  # axis of the weight that holds the outputs (1 for GPT-2's Conv1D)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layers: str  # path of the layer ModuleList inside model.base_model
    projections: Mapping[str, Projection]  # layer-relative module path -> how it is sliced
    config_keys: Mapping[str, str]  # size name (depth, heads, kv_heads, ffn, hidden) -> config attribute
    head_dim_in_config: bool  # True: config.head_dim sets the head size, so fewer heads export exactly
    dims: tuple[str, ...] = ("depth", "heads", "ffn", "hidden", "rank")
    # "module.attr" in a layer -> role, set on a switch
    layer_attrs: Mapping[str, str] = field(default_factory=dict)
    # modules (in model.base_model) whose output features are independent: run whole, cut to `hidden`
    hidden_outputs: tuple[str, ...] = ()

    # ---- sizes --------------------------------------------------------------------------------
    def _get(self, config: Any, size: str) -> Any:
        key = self.config_keys.get(size)
        return getattr(config, key, None) if key else None

    def full_sizes(self, config: Any) -> dict[str, int]:
        hidden = int(self._get(config, "hidden"))
        heads = int(self._get(config, "heads"))
        kv_heads = int(self._get(config, "kv_heads") or heads)
        head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
        ffn = int(self._get(config, "ffn") or 4 * hidden)  # GPT-2: n_inner=None means 4 * n_embd
        return {
            "depth": int(self._get(config, "depth")),
            "hidden": hidden,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "ffn": ffn,
        }

    def resolve(self, full: Mapping[str, int], dim: str, value: Value) -> int:
        """Absolute size for one space value, validated against the model (one-line ValueError)."""
        if dim not in self.dims:
            raise ValueError(
                f"dimension {dim!r} cannot be nested for model family {self.name!r}; "
                f"it supports: {', '.join(self.dims)}"
            )
        total = full[dim]
        what = DIM_NAMES.get(dim, dim)
        if isinstance(value, float):
            size = round(value * total)
            if size < 1:
                raise ValueError(
                    f"{dim}={value} of {total} {what} rounds to 0; allowed: a fraction >= {1 / total:.3g}"
                )
        else:
            size = value
            if size > total:
                raise ValueError(
                    f"{dim}={value} exceeds the model's {total} {what}; allowed: 1..{total} or a fraction in (0, 1]"
                )
        if dim == "heads":
            group = full["heads"] // full["kv_heads"]
            if size % group:
                raise ValueError(
                    f"heads={value} ({size} heads) cannot keep grouped-query attention groups whole: the model has "
                    f"{full['heads']} query heads over {full['kv_heads']} kv heads; allowed: multiples of {group}"
                )
        return size

    @staticmethod
    def role_sizes(full: Mapping[str, int], sizes: Mapping[str, int]) -> dict[str, int]:
        """Widths each role takes for the given absolute sizes (missing dims at full size)."""
        s = {**full, **sizes}
        kv_heads = s["heads"] * full["kv_heads"] // full["heads"]
        return {
            "depth": s["depth"],
            "hidden": s["hidden"],
            "q": s["heads"] * full["head_dim"],
            "kv": kv_heads * full["head_dim"],
            "ffn": s["ffn"],
            "rank": s.get("rank", 0),
        }

    def rank_targets(self, patterns: tuple[str, ...] | None) -> list[str]:
        """Layer-relative projection paths that `rank` factorises (all of them when patterns is None)."""
        if patterns is None:
            return list(self.projections)
        chosen = [p for p in self.projections if any(fnmatch.fnmatchcase(p, pat) for pat in patterns)]
        if not chosen:
            raise ValueError(
                f"nesting space rank_targets={list(patterns)} match no projection of model family {self.name!r}; "
                f"its projections: {', '.join(self.projections)}"
            )
        return chosen

    # ---- export -------------------------------------------------------------------------------
    def check_export(self, full: Mapping[str, int], sizes: Mapping[str, int], class_name: str) -> None:
        if self.head_dim_in_config:
            return
        s = {**full, **sizes}
        derived = s["hidden"] / s["heads"]
        if derived == full["head_dim"]:
            return
        what = (
            f"heads={s['heads']}"
            if s["hidden"] == full["hidden"]
            else f"hidden={s['hidden']} with heads={s['heads']}"
        )
        raise ValueError(
            f"{what} cannot be exported as a plain {class_name}: {self.name} derives the head size from "
            f"hidden_size / num_attention_heads (= {derived:g} here, trained as {full['head_dim']}) and transformers 5 "
            f"has no head pruning; export subnets whose hidden = heads x {full['head_dim']}, nest depth/ffn only, or "
            f"use a family whose config has head_dim ({HEAD_DIM_FAMILIES})"
        )

    def sub_config(self, config: Any, full: Mapping[str, int], sizes: Mapping[str, int]) -> Any:
        """A copy of the config with the subnet's sizes (head size unchanged)."""
        new = copy.deepcopy(config)
        s = {**full, **sizes}
        s["kv_heads"] = s["heads"] * full["kv_heads"] // full["heads"]
        for size in ("depth", "heads", "kv_heads", "ffn", "hidden"):
            key = self.config_keys.get(size)
            if key and (size != "kv_heads" or getattr(config, key, None) is not None):
                setattr(new, key, int(s[size]))
        if self.head_dim_in_config:
            new.head_dim = full["head_dim"]
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list):
            new.layer_types = layer_types[: s["depth"]]
        return new

    # ---- slicing plan -------------------------------------------------------------------------
    def _fused_patterns(self) -> list[tuple[re.Pattern[str], Projection]]:
        return [
            (re.compile(rf"(^|\.){re.escape(self.layers)}\.\d+\.{re.escape(path)}\.(weight|bias)$"), proj)
            for path, proj in self.projections.items()
            if len(proj.out_roles) > 1
        ]

    def slices(
        self, key: str, target_shape: tuple[int, ...], full: Mapping[str, int], sizes: Mapping[str, int]
    ) -> tuple[list[tuple[slice, ...]], int]:
        """Index tuples whose concatenation (along the returned axis) is the subnet's tensor for `key`.

        Every tensor is a prefix along each axis, except fused projections, whose output blocks are each a
        prefix of their own full block.
        """
        prefix = tuple(slice(0, n) for n in target_shape)
        for pattern, proj in self._fused_patterns():
            match = pattern.search(key)
            if not match:
                continue
            axis = proj.out_dim if match.group(2) == "weight" else 0
            full_roles, new_roles = self.role_sizes(full, {}), self.role_sizes(full, sizes)
            parts, offset = [], 0
            for role in proj.out_roles:
                idx = list(prefix)
                idx[axis] = slice(offset, offset + new_roles[role])
                parts.append(tuple(idx))
                offset += full_roles[role]
            return parts, axis
        return [prefix], 0
