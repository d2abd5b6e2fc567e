"""NestingSpace: which sub-models exist (sortednet.subnet.Subnet is one), and their order by cost.

For each nested dimension, the allowed sizes; the uniform sub-models are their product (the grid, enumerated
cheapest first). A space may allow sizes per layer and kept layers (`per_layer`): those sub-models are members
too (`in`, `normalize`, `cost`, `plan`) but are not enumerated. A space is unbound until `nest()` binds it to a
model's full sizes; binding validates every value against the model and replaces the cost proxy with the exact
parameter count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .members import MemberCostFn, PerLayerMembers, check_per_layer
from .subnet import (
    DIMENSIONS,
    Subnet,
    Value,
    check_value,
    format_value,
    parse_value,
    shown,
)

DEPTH_ORDERS = (
    "prefix",
    "every_other",
    "influence",
)  # or a ranking: a list of layer indices, most important first
# Vectorised cost: {dim: int array of absolute sizes} -> float array. Set by binding.
CostFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def check_depth_order(order: object, has_depth: bool) -> str | tuple[int, ...] | None:
    """`depth_order`: prefix (None), every_other, influence, or a ranking of layer indices (most important
    first; checked against the model's layer count when the space is bound)."""
    if order is None or order == "prefix":
        return None
    if not has_depth:
        raise ValueError(
            f"nesting space depth_order={shown(order)} is set but depth is not; give depth=[...] too"
        )
    if isinstance(order, str):
        if order not in DEPTH_ORDERS:
            raise ValueError(
                f"nesting.depth_order={shown(order)} is unknown; allowed: {', '.join(DEPTH_ORDERS)} or a list of "
                "layer indices, most important first"
            )
        return order
    ranking = list(order) if isinstance(order, Iterable) else [order]
    if not ranking or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ranking):
        raise ValueError(
            f"nesting.depth_order={shown(ranking)} is not a list of layer indices; allowed: {', '.join(DEPTH_ORDERS)} "
            "or a list of layer indices, most important first"
        )
    return tuple(int(i) for i in ranking)


class NestingSpace(PerLayerMembers):
    """For each nested dimension, the allowed sizes; its subnets are the product, ordered by cost.

    >>> space = NestingSpace(depth=[6, 12], ffn=[0.25, 0.5, 1.0], heads=[6, 12])
    >>> len(space), str(space.smallest)
    (12, 'depth=6,heads=6,ffn=0.25')
    """

    def __init__(
        self,
        values: Mapping[str, Iterable[Value]] | None = None,
        *,
        rank_targets: Iterable[str] | None = None,
        depth_order: str | Iterable[int] | None = None,
        per_layer: Iterable[str] | None = None,
        **dims: Iterable[Value],
    ) -> None:
        merged = {**(values or {}), **dims}
        targets = merged.pop("rank_targets", None) if rank_targets is None else rank_targets
        order = merged.pop("depth_order", None) if depth_order is None else depth_order
        varying = merged.pop("per_layer", None) if per_layer is None else per_layer
        # which projections `rank` factorises: layer-relative name patterns (fnmatch); None = the family's all
        self.rank_targets: tuple[str, ...] | None = None if targets is None else tuple(targets)
        if self.rank_targets is not None and "rank" not in merged:
            raise ValueError("nesting space rank_targets is set but rank is not; give rank=[...] sizes too")
        self.values: dict[str, tuple[Value, ...]] = {}
        for dim in DIMENSIONS:
            if merged.get(dim) is None:
                continue
            raw = merged[dim]
            raw = [raw] if isinstance(raw, (int, float, str)) else list(raw)
            if not raw:
                raise ValueError(f"nesting space {dim}=[] is empty; give at least one size")
            vals = [parse_value(dim, v) if isinstance(v, str) else check_value(dim, v) for v in raw]
            kinds = {type(v) for v in vals}
            if len(kinds) > 1:
                raise ValueError(
                    f"nesting space {dim}={vals} mixes fractions and absolute sizes; "
                    "allowed: all fractions in (0, 1] or all ints >= 1"
                )
            self.values[dim] = tuple(sorted(set(vals)))
        for dim in merged:
            if dim not in DIMENSIONS:
                raise ValueError(f"unknown dimension {shown(dim)}; allowed: {', '.join(DIMENSIONS)}")
        if not self.values:
            raise ValueError(
                f"nesting space is empty; give sizes for at least one of {', '.join(DIMENSIONS)}"
            )
        # which layers depth=k keeps: the first k of a ranking (see sortednet.depth_order); None = prefix
        self.depth_order: str | tuple[int, ...] | None = check_depth_order(order, "depth" in self.values)
        self.per_layer: tuple[str, ...] = check_per_layer(varying, self.values)
        self.ranking: tuple[int, ...] | None = None  # the model's depth order, once bound
        self.full: dict[str, int] | None = None
        self._resolved: dict[str, tuple[int, ...]] | None = None
        self._cost_fn: CostFn | None = None
        self._member_cost: MemberCostFn | None = None
        self._ordered: list[Subnet] | None = None
        self._costs: np.ndarray | None = None

    # ---- binding to a model -------------------------------------------------------------------
    def bind(
        self, full: Mapping[str, int], resolve: Callable[[str, Value], int], cost_fn: CostFn | None
    ) -> NestingSpace:
        """A copy bound to a model: `resolve(dim, value)` validates and gives the absolute size."""
        bound = NestingSpace(
            self.values,
            rank_targets=self.rank_targets,
            depth_order=self.depth_order,
            per_layer=self.per_layer,
        )
        bound.full = dict(full)
        bound._resolved = {d: tuple(resolve(d, v) for v in vals) for d, vals in self.values.items()}
        for dim, sizes in bound._resolved.items():
            if len(set(sizes)) != len(sizes):
                raise ValueError(
                    f"nesting space {dim}={list(self.values[dim])} names the same size twice "
                    f"({list(sizes)} for this model); allowed: distinct sizes"
                )
        bound._cost_fn = cost_fn
        return bound

    def set_cost(self, cost_fn: CostFn, member_cost: MemberCostFn | None = None) -> None:
        """Order this bound space by `cost_fn` (the nested model's exact parameter count); `member_cost` counts
        a per-layer member from its plan."""
        self._cost_fn, self._ordered, self._costs = cost_fn, None, None
        self._member_cost = member_cost

    def set_ranking(self, ranking: Sequence[int]) -> None:
        """The model's layers in the order depth keeps them (sortednet.depth_order), once nested."""
        self.ranking = tuple(ranking)

    @property
    def is_bound(self) -> bool:
        return self._resolved is not None

    def resolve(self, subnet: Subnet | str) -> dict[str, int]:
        """Absolute size of every nested dimension for a uniform subnet of this (bound) space (a per-layer one:
        `plan`)."""
        if self._resolved is None:
            raise ValueError("this nesting space is not bound to a model; use nest(model, space).space")
        sub = Subnet.parse(subnet)
        if sub.per_layer:
            sub = self.normalize(sub)
            if sub.per_layer:
                raise ValueError(
                    f"subnet {shown(str(sub))} has sizes per layer; its sizes: space.plan(subnet)"
                )
        index = self._index(sub)
        return {d: self._resolved[d][i] for d, i in zip(self.values, index, strict=True)}

    def absolute(self, dim: str) -> tuple[int, ...]:
        """The absolute sizes of one nested dimension of this (bound) space, smallest first."""
        if self._resolved is None:
            raise ValueError("this nesting space is not bound to a model; use nest(model, space).space")
        return self._resolved[dim]

    # ---- membership ---------------------------------------------------------------------------
    def _index(self, subnet: Subnet) -> tuple[int, ...]:
        for dim in subnet.dims:
            if dim not in self.values:
                raise ValueError(
                    f"subnet {subnet} sets {dim!r}, which this nesting space does not nest; "
                    f"nested dimensions: {', '.join(self.values)}"
                )
        index = []
        for dim, vals in self.values.items():
            value = subnet.get(dim)
            # an unspecified dimension is at full size
            i = self._full_index(dim) if value is None else self._find(dim, value)
            if i is None:
                allowed = ", ".join(format_value(v) for v in vals)
                shown = format_value(value) if value is not None else "full size"
                raise ValueError(f"subnet {dim}={shown} is not in the nesting space; allowed: {allowed}")
            index.append(i)
        return tuple(index)

    def _find(self, dim: str, value: Value) -> int | None:
        vals = self.values[dim]
        if value in vals and type(value) is type(vals[0]):
            return vals.index(value)
        if self._resolved is not None and self.full is not None:
            absolute = round(value * self.full[dim]) if isinstance(value, float) else value
            if absolute in self._resolved[dim]:
                return self._resolved[dim].index(absolute)
        return None

    def _full_index(self, dim: str) -> int | None:
        if self._resolved is not None and self.full is not None:
            sizes = self._resolved[dim]
            return sizes.index(self.full[dim]) if self.full[dim] in sizes else None
        vals = self.values[dim]
        return vals.index(1.0) if 1.0 in vals and isinstance(vals[0], float) else None

    def normalize(self, subnet: Subnet | str) -> Subnet:
        """The space's own spelling of a member (every nested dim, values as listed; a per-layer list whose sizes
        are all one size, and kept layers that are what a depth keeps, spelt uniformly); raises if outside."""
        sub = Subnet.parse(subnet)
        if sub.per_layer:
            return self._normalize_per_layer(sub)
        index = self._index(sub)
        return Subnet({d: self.values[d][i] for d, i in zip(self.values, index, strict=True)})

    def __contains__(self, subnet: object) -> bool:
        try:
            self.normalize(subnet)  # type: ignore[arg-type]
        except ValueError:
            return False
        return True

    # ---- enumeration --------------------------------------------------------------------------
    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.values)

    def __len__(self) -> int:
        return math.prod(len(v) for v in self.values.values())

    @property
    def largest(self) -> Subnet:
        return Subnet({d: v[-1] for d, v in self.values.items()})

    @property
    def smallest(self) -> Subnet:
        return Subnet({d: v[0] for d, v in self.values.items()})

    def _grid(self) -> np.ndarray:
        """(len, ndims) index grid in row-major product order."""
        shape = [len(v) for v in self.values.values()]
        return np.indices(shape).reshape(len(shape), -1).T

    def _grid_costs(self, grid: np.ndarray) -> np.ndarray:
        if self._cost_fn is not None and self._resolved is not None:
            sizes = {d: np.asarray(self._resolved[d])[grid[:, j]] for j, d in enumerate(self.values)}
            return np.asarray(self._cost_fn(sizes), dtype=np.float64)
        # unbound: product of each size relative to the largest listed size of its dimension
        rel = [np.asarray(v, dtype=np.float64) / float(v[-1]) for v in self.values.values()]
        return np.prod([r[grid[:, j]] for j, r in enumerate(rel)], axis=0)

    def _order(self) -> None:
        grid = self._grid()
        costs = self._grid_costs(grid)
        order = np.argsort(costs, kind="stable")
        dims = list(self.values)
        vals = [self.values[d] for d in dims]
        self._ordered = [
            Subnet(dict(zip(dims, (vals[j][k] for j, k in enumerate(grid[i])), strict=True))) for i in order
        ]
        self._costs = costs[order]

    def subnets(self) -> list[Subnet]:
        """Every subnet, cheapest first (exact parameter count once bound, a size proxy before)."""
        if self._ordered is None:
            self._order()
        return list(self._ordered)  # type: ignore[arg-type]

    def costs(self) -> np.ndarray:
        """Cost of each subnet in `subnets()` order."""
        if self._costs is None:
            self._order()
        return self._costs.copy()  # type: ignore[union-attr]

    def cost(self, subnet: Subnet | str) -> float:
        sub = Subnet.parse(subnet)
        if sub.per_layer:
            sub = self.normalize(sub)
        if sub.per_layer:
            if self._member_cost is None:
                raise ValueError("the cost of a per-layer subnet needs a space bound to a model (nest())")
            return float(self._member_cost(self.plan(sub)))
        index = np.asarray([self._index(sub)])
        return float(self._grid_costs(index)[0])

    def __iter__(self) -> Iterator[Subnet]:
        return iter(self.subnets())

    def sample(self, k: int, generator: np.random.Generator | int | None = None) -> list[Subnet]:
        """k subnets drawn uniformly with replacement."""
        rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
        ordered = self.subnets()
        return [ordered[i] for i in rng.integers(0, len(ordered), size=k)]

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, list]:
        out: dict[str, list] = {d: list(v) for d, v in self.values.items()}
        if self.rank_targets is not None:
            out["rank_targets"] = list(self.rank_targets)
        if self.depth_order is not None:
            order = self.depth_order
            out["depth_order"] = order if isinstance(order, str) else list(order)  # type: ignore[assignment]
        if self.per_layer:
            out["per_layer"] = list(self.per_layer)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Iterable[Value]]) -> NestingSpace:
        return cls(dict(data))

    @classmethod
    def parse(cls, text: str) -> NestingSpace:
        """`NestingSpace.parse("depth=6|12,ffn=0.5|1.0")`: sizes of a dimension separated by '|'."""
        dims: dict[str, list[Value]] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            dim, sep, raw = part.partition("=")
            if not sep:
                raise ValueError(
                    f"nesting space part {shown(part)} is not dim=a|b|c; example: depth=6|12,ffn=0.5|1.0"
                )
            dims[dim.strip()] = [parse_value(dim.strip(), r) for r in raw.split("|")]
        return cls(dims)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, NestingSpace)
            and self.values == other.values
            and self.rank_targets == other.rank_targets
            and self.depth_order == other.depth_order
            and self.per_layer == other.per_layer
        )

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{d}={[format_value(x) for x in v]}".replace("'", "") for d, v in self.values.items()
        )
        return f"NestingSpace({inner})"


__all__ = ["DIMENSIONS", "NestingSpace", "Subnet", "Value"]
