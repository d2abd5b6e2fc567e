"""Subnet and NestingSpace: what a sub-model is, which ones exist, and their order by cost.

A value is a fraction of the full size (float in (0, 1]) or an absolute size (int >= 1). A space is
unbound until `nest()` binds it to a model's full sizes; binding validates every value against the model
and replaces the cost proxy with the exact parameter count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

from .checks import shown

DIMENSIONS = ("depth", "hidden", "heads", "ffn", "rank", "channels")
DEPTH_ORDERS = (
    "prefix",
    "every_other",
    "influence",
)  # or a ranking: a list of layer indices, most important first
Value = int | float
# Vectorised cost: {dim: int array of absolute sizes} -> float array. Set by binding.
CostFn = Callable[[Mapping[str, np.ndarray]], np.ndarray]


def check_dim(dim: str) -> None:
    if dim not in DIMENSIONS:
        raise ValueError(f"unknown dimension {shown(dim)}; allowed: {', '.join(DIMENSIONS)}")


def check_value(dim: str, value: object) -> Value:
    check_dim(dim)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"{dim}={shown(value)} is not a number; allowed: an int >= 1 or a fraction in (0, 1]"
        )
    if isinstance(value, (float, np.floating)):
        if not 0.0 < float(value) <= 1.0 or math.isnan(value):
            raise ValueError(
                f"{dim}={shown(value)} is outside (0, 1]; allowed: a fraction in (0, 1] or an int >= 1"
            )
        return float(value)
    if int(value) < 1:
        raise ValueError(f"{dim}={shown(value)} is below 1; allowed: an int >= 1 or a fraction in (0, 1]")
    return int(value)


def format_value(value: Value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def parse_value(dim: str, text: str) -> Value:
    check_dim(dim)  # an unknown dimension is said as such, whatever its value
    text = text.strip()
    try:
        value: Value = int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise ValueError(
            f"{dim}={shown(text)} is not a number; allowed: an int >= 1 or a fraction in (0, 1]"
        ) from None
    return check_value(dim, value)


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


class Subnet:
    """One point of a nesting space: a size for some dimensions (the others are at full size)."""

    __slots__ = ("_sizes", "_hash")

    def __init__(self, sizes: Mapping[str, Value] | None = None, **kwargs: Value) -> None:
        merged = {**(sizes or {}), **kwargs}
        checked = {d: check_value(d, v) for d, v in merged.items()}
        self._sizes = tuple((d, checked[d]) for d in DIMENSIONS if d in checked)
        self._hash = hash(self._sizes)

    @classmethod
    def parse(cls, text: str | Subnet) -> Subnet:
        """`Subnet.parse("depth=8,ffn=0.5,heads=6")`; `str(subnet)` gives the same text back."""
        if isinstance(text, Subnet):
            return text
        sizes: dict[str, Value] = {}
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            dim, sep, raw = part.partition("=")
            dim = dim.strip()
            if not sep:
                raise ValueError(
                    f"subnet part {shown(part)} is not dim=value; example: depth=8,ffn=0.5,heads=6"
                )
            if dim in sizes:
                raise ValueError(f"subnet {shown(text)} gives {dim!r} twice; give each dimension once")
            sizes[dim] = parse_value(dim, raw)
        return cls(sizes)

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self._sizes)

    def get(self, dim: str, default: Value | None = None) -> Value | None:
        return dict(self._sizes).get(dim, default)

    def __getitem__(self, dim: str) -> Value:
        return dict(self._sizes)[dim]

    def items(self) -> tuple[tuple[str, Value], ...]:
        return self._sizes

    def as_dict(self) -> dict[str, Value]:
        return dict(self._sizes)

    def __str__(self) -> str:
        return ",".join(f"{d}={format_value(v)}" for d, v in self._sizes)

    def __repr__(self) -> str:
        return f"Subnet({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Subnet) and self._sizes == other._sizes

    def __hash__(self) -> int:
        return self._hash


class NestingSpace:
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
        **dims: Iterable[Value],
    ) -> None:
        merged = {**(values or {}), **dims}
        targets = merged.pop("rank_targets", None) if rank_targets is None else rank_targets
        order = merged.pop("depth_order", None) if depth_order is None else depth_order
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
        self.full: dict[str, int] | None = None
        self._resolved: dict[str, tuple[int, ...]] | None = None
        self._cost_fn: CostFn | None = None
        self._ordered: list[Subnet] | None = None
        self._costs: np.ndarray | None = None

    # ---- binding to a model -------------------------------------------------------------------
    def bind(
        self, full: Mapping[str, int], resolve: Callable[[str, Value], int], cost_fn: CostFn | None
    ) -> NestingSpace:
        """A copy bound to a model: `resolve(dim, value)` validates and gives the absolute size."""
        bound = NestingSpace(self.values, rank_targets=self.rank_targets, depth_order=self.depth_order)
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

    def set_cost(self, cost_fn: CostFn) -> None:
        """Order this bound space by `cost_fn` (the nested model's exact parameter count)."""
        self._cost_fn, self._ordered, self._costs = cost_fn, None, None

    @property
    def is_bound(self) -> bool:
        return self._resolved is not None

    def resolve(self, subnet: Subnet | str) -> dict[str, int]:
        """Absolute size of every nested dimension for a subnet of this (bound) space."""
        if self._resolved is None:
            raise ValueError("this nesting space is not bound to a model; use nest(model, space).space")
        index = self._index(Subnet.parse(subnet))
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
        """The space's own spelling of a subnet (every nested dim, values as listed); raises if outside."""
        index = self._index(Subnet.parse(subnet))
        return Subnet({d: self.values[d][i] for d, i in zip(self.values, index, strict=True)})

    def __contains__(self, subnet: object) -> bool:
        try:
            self._index(Subnet.parse(subnet))  # type: ignore[arg-type]
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
        index = np.asarray([self._index(Subnet.parse(subnet))])
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
        )

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{d}={[format_value(x) for x in v]}".replace("'", "") for d, v in self.values.items()
        )
        return f"NestingSpace({inner})"


__all__ = ["DIMENSIONS", "NestingSpace", "Subnet", "Value"]
