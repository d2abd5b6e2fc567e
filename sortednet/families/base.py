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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..spec import Value

DIM_NAMES = {
    "rank": "rank (of the largest factorised projection)",
    "depth": "layers",
    "heads": "attention heads",
    "ffn": "FFN neurons (intermediate size)",
    "hidden": "hidden size",
}
PROJECTION_ROLES = ("hidden", "q", "kv", "ffn")  # widths a projection's input or output block follows
LAYER_ATTR_ROLES = (*PROJECTION_ROLES, "heads", "kv_heads")  # widths, or head counts, set on a switch
SIZE_KEYS = ("depth", "heads", "kv_heads", "ffn", "hidden", "head_dim")  # what config_keys may name
REQUIRED_SIZE_KEYS = ("depth", "heads", "ffn", "hidden")


def from_fields(cls: Any, data: Mapping[str, Any]) -> Any:
    """A family dataclass from its header JSON; one-line ValueError for an unknown or missing field."""
    known = [f.name for f in fields(cls) if f.name != "verified"]
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ValueError(f"family field {unknown[0]!r} is not known; allowed: {', '.join(known)}")
    try:
        return cls(**data)
    except TypeError as err:  # a required field is missing
        raise ValueError(f"family {data.get('name')!r} cannot be read: {err}") from None


def check_dim(family: Any, dim: str) -> None:
    """One-line ValueError for a dimension a family (layer- or stage-based) does not nest, naming the ones it does."""
    if dim not in family.dims:
        why = f" ({family.unsupported[dim]})" if dim in family.unsupported else ""
        raise ValueError(
            f"dimension {dim!r} cannot be nested for model family {family.name!r}{why}; "
            f"it supports: {', '.join(family.dims)}"
        )


@dataclass(frozen=True)
class Projection:
    out_roles: tuple[str, ...]  # one role per output block (GPT-2's fused c_attn: q, kv, kv)
    in_role: str
    out_dim: int = 0  # axis of the weight that holds the outputs (1 for GPT-2's Conv1D)
    optional: bool = False  # absent from some configs of the family (DeBERTa's pos_key_proj)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_roles": list(self.out_roles),
            "in_role": self.in_role,
            "out_dim": self.out_dim,
            "optional": self.optional,
        }


@dataclass(frozen=True)
class Family:
    """Declarative data only (JSON in the one-file checkpoint header): no field holds code."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # path of the layer ModuleList inside model.base_model
    projections: Mapping[str, Projection]  # layer-relative module path -> how it is sliced
    # size name (depth, heads, kv_heads, ffn, hidden, head_dim) -> config attribute
    config_keys: Mapping[str, str]
    # True: the head size is a config value (config_keys["head_dim"], default "head_dim") that the model reads,
    # so sub-models with fewer heads or a smaller hidden size keep their head size on export
    head_dim_in_config: bool
    dims: tuple[str, ...] = ("depth", "heads", "ffn", "hidden", "rank")
    # "module.attr" in a layer -> role (a width or a head count), set on a switch
    layer_attrs: Mapping[str, str] = field(default_factory=dict)
    # modules (in model.base_model) whose output features are independent: run whole, cut to `hidden`
    hidden_outputs: tuple[str, ...] = ()
    # dimension -> why this family cannot nest it (said when a space asks for it)
    unsupported: Mapping[str, str] = field(default_factory=dict)
    # True once check_family passed for it in sortednet's tests: nest() skips its own cheap check
    verified: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        projections = {
            path: p if isinstance(p, Projection) else _projection(self.name, path, p)
            for path, p in dict(self.projections).items()
        }
        projections = {path: replace(p, out_roles=tuple(p.out_roles)) for path, p in projections.items()}
        for name, value in (
            ("model_types", tuple(self.model_types)),
            ("projections", projections),
            ("config_keys", dict(self.config_keys)),
            ("dims", tuple(self.dims)),
            ("layer_attrs", dict(self.layer_attrs)),
            ("hidden_outputs", tuple(self.hidden_outputs)),
            ("unsupported", dict(self.unsupported)),
        ):
            object.__setattr__(self, name, value)
        self._validate()

    def _validate(self) -> None:
        where = f"family {self.name!r}"

        def allowed(what: str, values, choices) -> None:
            bad = [v for v in values if v not in choices]
            if bad:
                raise ValueError(f"{where}: {what} {bad[0]!r} is not known; allowed: {', '.join(choices)}")

        if not self.name or not self.model_types or not self.layers:
            raise ValueError(f"{where}: name, model_types and layers must be non-empty")
        if not self.projections:
            raise ValueError(f"{where}: projections is empty; declare at least one sliced projection")
        for path, proj in self.projections.items():
            allowed(f"projection {path!r} out role", proj.out_roles, PROJECTION_ROLES)
            allowed(f"projection {path!r} in role", (proj.in_role,), PROJECTION_ROLES)
            if proj.out_dim not in (0, 1) or not proj.out_roles:
                raise ValueError(f"{where}: projection {path!r} needs out roles and out_dim 0 or 1")
        allowed("config_keys size", self.config_keys, SIZE_KEYS)
        missing = [k for k in REQUIRED_SIZE_KEYS if k not in self.config_keys]
        if missing:
            raise ValueError(
                f"{where}: config_keys lacks {missing[0]!r}; it needs {', '.join(REQUIRED_SIZE_KEYS)}"
            )
        allowed("dimension", self.dims, tuple(DIM_NAMES))
        allowed("unsupported dimension", self.unsupported, tuple(DIM_NAMES))
        both = [d for d in self.unsupported if d in self.dims]
        if both:
            raise ValueError(
                f"{where}: dimension {both[0]!r} is in both dims and unsupported; give it in one"
            )
        allowed("layer_attrs role", self.layer_attrs.values(), LAYER_ATTR_ROLES)

    # ---- the checkpoint header ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what the one-file checkpoint stores. `verified` is left out: a family read from a file
        is checked again in the process that reads it."""
        return {
            "name": self.name,
            "model_types": list(self.model_types),
            "layers": self.layers,
            "projections": {path: p.to_dict() for path, p in self.projections.items()},
            "config_keys": dict(self.config_keys),
            "head_dim_in_config": self.head_dim_in_config,
            "dims": list(self.dims),
            "layer_attrs": dict(self.layer_attrs),
            "hidden_outputs": list(self.hidden_outputs),
            "unsupported": dict(self.unsupported),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Family:
        return from_fields(cls, data)

    # ---- sizes --------------------------------------------------------------------------------
    def _get(self, config: Any, size: str) -> Any:
        key = self.config_keys.get(size)
        return getattr(config, key, None) if key else None

    def full_sizes(self, config: Any) -> dict[str, int]:
        hidden = int(self._get(config, "hidden"))
        heads = int(self._get(config, "heads"))
        kv_heads = int(self._get(config, "kv_heads") or heads)
        head_dim = int(getattr(config, self.head_dim_key, None) or hidden // heads)
        ffn = int(self._get(config, "ffn") or 4 * hidden)  # GPT-2: n_inner=None means 4 * n_embd
        return {
            "depth": int(self._get(config, "depth")),
            "hidden": hidden,
            "heads": heads,
            "kv_heads": kv_heads,
            "head_dim": head_dim,
            "ffn": ffn,
        }

    @property
    def head_dim_key(self) -> str:
        return self.config_keys.get("head_dim", "head_dim")

    def check_dim(self, dim: str) -> None:
        check_dim(self, dim)

    def resolve(self, full: Mapping[str, int], dim: str, value: Value) -> int:
        """Absolute size for one space value, validated against the model (one-line ValueError)."""
        self.check_dim(dim)
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
        """Widths each role takes for the given absolute sizes (missing dims at full size), and the head
        counts (`heads`, `kv_heads`) for layer attributes that hold them."""
        s = {**full, **sizes}
        kv_heads = s["heads"] * full["kv_heads"] // full["heads"]
        return {
            "depth": s["depth"],
            "hidden": s["hidden"],
            "q": s["heads"] * full["head_dim"],
            "kv": kv_heads * full["head_dim"],
            "ffn": s["ffn"],
            "rank": s.get("rank", 0),
            "heads": s["heads"],
            "kv_heads": kv_heads,
        }

    def layer_projections(self, layer: Any) -> dict[str, Projection]:
        """The declared projections present in one layer (an optional one may be absent from a config)."""
        present = {}
        for path, proj in self.projections.items():
            try:
                layer.get_submodule(path)
            except AttributeError:
                if proj.optional:
                    continue
                raise ValueError(
                    f"model family {self.name!r} declares projection {path!r}, which this model's layers lack; "
                    f"mark it optional=True if some configs of the family have no such module"
                ) from None
            present[path] = proj
        return present

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
            f"use a family that writes the head size into the config (head_dim_in_config)"
        )

    def sub_config(
        self,
        config: Any,
        full: Mapping[str, int],
        sizes: Mapping[str, int],
        kept: Sequence[int] | None = None,
    ) -> Any:
        """A copy of the config with the subnet's sizes (head size unchanged); `kept`: the layers it runs (default:
        the first `depth`), whose per-layer entries (`layer_types`) it keeps."""
        new = copy.deepcopy(config)
        s = {**full, **sizes}
        s["kv_heads"] = s["heads"] * full["kv_heads"] // full["heads"]
        for size in ("depth", "heads", "kv_heads", "ffn", "hidden"):
            key = self.config_keys.get(size)
            if key and (size != "kv_heads" or getattr(config, key, None) is not None):
                setattr(new, key, int(s[size]))
        if self.head_dim_in_config:
            setattr(new, self.head_dim_key, full["head_dim"])
        layer_types = getattr(config, "layer_types", None)
        if isinstance(layer_types, list):
            own = list(layer_types)  # iterated, not indexed: a nested model's list answers by kept layer
            new.layer_types = [own[i] for i in (kept if kept is not None else range(s["depth"]))]
        return new

    def layer_key(self, key: str) -> re.Match[str] | None:
        """The layer index in a parameter key (`model.layers.3.mlp.up_proj.weight` -> 3), as a match of group 2."""
        return re.search(rf"(^|\.){re.escape(self.layers)}\.(\d+)\.", key)

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


def _projection(family: str, path: str, data: Any) -> Projection:
    if not isinstance(data, Mapping):
        raise ValueError(
            f"family {family!r}: projection {path!r} is {data!r}; expected a Projection or a dict"
        )
    try:
        return Projection(**data)
    except TypeError as err:
        raise ValueError(f"family {family!r}: projection {path!r} cannot be read: {err}") from None
