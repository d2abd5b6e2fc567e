"""The members of a nesting space that give a size per layer or the kept layers (Mix'n'Match, Gemma 3n's slicing
configs): checking and spelling them, and resolving any member to a `Plan` (its kept layers and each one's sizes).

`PerLayerMembers` is the part of `NestingSpace` (sortednet.spec) that knows them; it reads the space's `values`,
`per_layer`, `ranking` and, once bound, its absolute sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .subnet import LAYERS, PER_LAYER, Subnet, Value, format_value, shown


@dataclass(frozen=True)
class Plan:
    """What one sub-model runs, resolved to absolute sizes: the kept layers (in order), the sizes of each
    (`layers[j]` for kept layer j: every per-layer dimension) and the sizes shared by all (`sizes`: depth is the
    number of kept layers)."""

    kept: tuple[int, ...]
    layers: tuple[dict[str, int], ...]
    sizes: dict[str, int]

    @property
    def uniform(self) -> bool:
        return all(layer == self.layers[0] for layer in self.layers)


# the exact parameter count of any member from its plan (set by binding, beside the vectorised grid cost)
MemberCostFn = Callable[[Plan], float]


def check_per_layer(value: object, values: Mapping[str, Any]) -> tuple[str, ...]:
    """`per_layer`: the dimensions that may take a size per layer, and `layers` (any kept layers)."""
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    allowed = (*PER_LAYER, LAYERS)
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"nesting.per_layer: {shown(name)} cannot vary per layer; allowed: {', '.join(allowed)}"
            )
        needed = "depth" if name == LAYERS else name
        if needed not in values:
            raise ValueError(
                f"nesting.per_layer: {name} varies per layer but the space does not nest {needed}"
            )
    return tuple(n for n in allowed if n in names)


class PerLayerMembers:
    """Per-layer members of a NestingSpace (a mixin: the space's own attributes are `self`'s)."""

    values: dict[str, tuple[Value, ...]]
    per_layer: tuple[str, ...]
    ranking: tuple[int, ...] | None
    full: dict[str, int] | None
    _resolved: dict[str, tuple[int, ...]] | None

    def plan(self, subnet: Subnet | str) -> Plan:
        """The kept layers and every size of any member (uniform or per layer), absolute; bound spaces only."""
        if self._resolved is None or self.full is None:
            raise ValueError("this nesting space is not bound to a model; use nest(model, space).space")
        sub = self.normalize(subnet)
        own = [d for d in PER_LAYER if d in self.values]
        shared = {d: self._absolute(d, v) for d, v in sub.items() if not isinstance(v, tuple)}
        depth = shared.get("depth", self.full.get("depth", 0))
        kept = sub.layers if sub.layers is not None else self.kept(depth)
        layers = tuple(
            {d: self._absolute(d, v[j] if isinstance(v, tuple) else v) for d, v in sub.items() if d in own}
            for j in range(len(kept))
        )
        return Plan(kept, layers, {**shared, "depth": len(kept)} if "depth" in self.values else shared)

    def kept(self, depth: int) -> tuple[int, ...]:
        """The layers depth=`depth` keeps: the first of the model's depth order, in sequence."""
        ranking = self.ranking if self.ranking is not None else tuple(range(self.full["depth"]))  # type: ignore[index]
        return tuple(sorted(ranking[:depth]))

    def _absolute(self, dim: str, value: Value) -> int:
        return self._resolved[dim][self._find(dim, value)]  # type: ignore[index]

    def _normalize_per_layer(self, sub: Subnet) -> Subnet:
        varying = [d for d, v in sub.items() if isinstance(v, tuple)] + ([LAYERS] if sub.layers else [])
        for dim in varying:
            if dim not in self.per_layer:
                allowed = ", ".join(self.per_layer) or "none (nesting.per_layer)"
                raise ValueError(
                    f"subnet {shown(str(sub))} gives {dim} per layer; this nesting space allows per layer: {allowed}"
                )
        sizes: dict[str, Any] = {}
        for dim, value in sub.items():
            values = value if isinstance(value, tuple) else (value,)
            found = [self._normal(dim, v) for v in values]
            sizes[dim] = found[0] if len(set(found)) == 1 and not isinstance(value, tuple) else tuple(found)
        layers = sub.layers
        for dim in self.values:  # an unspecified dimension is at full size (depth: the kept layers say it)
            if dim not in sizes and not (dim == "depth" and layers is not None):
                sizes[dim] = self._full_value(dim)
        if layers is not None:
            layers = self._check_kept(layers)
            count: int | None = len(layers)
            if self.is_bound and count in self.absolute("depth") and layers == self.kept(count):
                sizes["depth"], layers = self.values["depth"][self.absolute("depth").index(count)], None
        else:
            count = self._absolute("depth", sizes["depth"]) if "depth" in sizes and self.is_bound else None
        for dim, value in list(sizes.items()):
            if isinstance(value, tuple):
                if count is not None and len(value) != count:
                    raise ValueError(
                        f"subnet {shown(str(sub))}: {dim} gives {len(value)} sizes for {count} layers"
                    )
                if len(set(value)) == 1:
                    sizes[dim] = value[0]
        normal = Subnet(sizes, layers=layers)
        return normal if normal.per_layer else self.normalize(normal)

    def _full_value(self, dim: str) -> Value:
        i = self._full_index(dim)
        if i is None:
            allowed = ", ".join(format_value(v) for v in self.values[dim])
            raise ValueError(f"subnet {dim}=full size is not in the nesting space; allowed: {allowed}")
        return self.values[dim][i]

    def _normal(self, dim: str, value: Value) -> Value:
        if dim not in self.values:
            raise ValueError(
                f"subnet sets {dim!r}, which this nesting space does not nest; nested: {', '.join(self.values)}"
            )
        i = self._find(dim, value)
        if i is None:
            allowed = ", ".join(format_value(v) for v in self.values[dim])
            raise ValueError(
                f"subnet {dim}={format_value(value)} is not in the nesting space; allowed: {allowed}"
            )
        return self.values[dim][i]

    def _check_kept(self, layers: tuple[int, ...]) -> tuple[int, ...]:
        """Kept layers: as many as a depth of the space allows (between its smallest and largest), of the model."""
        if not self.is_bound:
            return layers
        depths = self.absolute("depth")
        if not depths[0] <= len(layers) <= depths[-1] or layers[-1] >= self.full["depth"]:  # type: ignore[index]
            raise ValueError(
                f"layers={shown(list(layers))}: allowed: {depths[0]} to {depths[-1]} distinct layers of "
                f"0..{self.full['depth'] - 1}"  # type: ignore[index]
            )
        return layers

    def sample_member(self, rng: np.random.Generator, depth: Value | None = None) -> Subnet:
        """A member drawn at random: a depth of the space (or `depth`), then for each dimension varying per layer a
        size per kept layer and, with `layers`, kept layers at random; the others uniform. Bound spaces only."""
        if depth is None and "depth" in self.values:
            depth = self.values["depth"][int(rng.integers(len(self.values["depth"])))]
        count = self._absolute("depth", depth) if depth is not None else self.full["depth"]  # type: ignore[index]
        sizes: dict[str, Any] = {} if depth is None else {"depth": depth}
        for dim, values in self.values.items():
            if dim == "depth":
                continue
            picks = [
                values[int(i)] for i in rng.integers(len(values), size=count if dim in self.per_layer else 1)
            ]
            sizes[dim] = tuple(picks) if dim in self.per_layer else picks[0]
        layers = None
        if LAYERS in self.per_layer:
            layers = tuple(sorted(int(i) for i in rng.choice(self.full["depth"], size=count, replace=False)))  # type: ignore[index]
            sizes.pop("depth", None)
        return self.normalize(Subnet(sizes, layers=layers))  # type: ignore[attr-defined]
