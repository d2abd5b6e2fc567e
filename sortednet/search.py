"""Evolutionary search for the best member under a budget (OFA, Flextron): over the members a space allows, per-layer
ones included, with a cheap proxy first and the real metric for the finalists.

One `Evolution` per budget: a population of members within the budget (the uniform members that fit, then random
draws), scored by a proxy (lower is better: the KL divergence of a member's predictions from the largest member's on
a few batches); each generation keeps the better half as parents and refills the population with their mutations
and crossovers that fit the budget. Every draw comes from `numpy.random.default_rng([seed, generation])`, so a run is
deterministic, and `state()` / `Evolution(..., state=...)` resume it after any generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import number
from .subnet import LAYERS, Subnet


@dataclass(frozen=True)
class SearchOptions:
    population: int = 24
    generations: int = 10
    mutation: float = 0.25  # chance that a size (a layer's size) is redrawn in a mutation
    finalists: int = 5  # members per budget evaluated for real
    seed: int = 0

    def __post_init__(self) -> None:
        number("--population", self.population, int, low=4)
        number("--generations", self.generations, int, low=0)
        number("--mutation", self.mutation, low=0, high=1)
        number("--finalists", self.finalists, int, low=1)
        number("--seed", self.seed, int, low=0)


def mutate(space: Any, member: Subnet, rng: np.random.Generator, chance: float) -> Subnet:
    """Each size (each layer's, for a dimension that varies per layer) redrawn with probability `chance`; with
    `layers`, one kept layer swapped for a skipped one with that probability."""
    plan = space.plan(member)
    count = len(plan.kept)
    sizes: dict[str, Any] = {}
    for dim, values in space.values.items():
        if dim == "depth":
            continue
        current = member.get(dim, values[-1])
        per = list(current) if isinstance(current, tuple) else [current] * count
        if dim in space.per_layer:
            sizes[dim] = tuple(values[rng.integers(len(values))] if rng.random() < chance else v for v in per)
        else:
            sizes[dim] = values[rng.integers(len(values))] if rng.random() < chance else per[0]
    kept = list(plan.kept)
    if LAYERS in space.per_layer and rng.random() < chance:
        skipped = [i for i in range(space.full["depth"]) if i not in kept]
        if skipped:
            kept[int(rng.integers(count))] = skipped[int(rng.integers(len(skipped)))]
    if LAYERS in space.per_layer:
        return space.normalize(Subnet(sizes, layers=kept))
    depth = member.get("depth")
    return space.normalize(Subnet({**sizes, **({"depth": depth} if depth is not None else {})}))


def crossover(space: Any, a: Subnet, b: Subnet, rng: np.random.Generator) -> Subnet:
    """Each size from one parent or the other; per layer when both keep as many layers (their kept layers
    then from one parent), else the child is one parent's with the other's uniform sizes where it has them."""
    plan_a, plan_b = space.plan(a), space.plan(b)
    if len(plan_a.kept) != len(plan_b.kept):  # one parent, with the other's sizes where both are uniform
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        mixed = {
            d: (vb if d != "depth" and not isinstance(va, tuple) and not isinstance(vb, tuple) and rng.random() < 0.5
                else va)
            for d, va in a.items()
            for vb in [b.get(d, va)]
        }  # fmt: skip
        return space.normalize(Subnet(mixed, layers=a.layers))
    sizes: dict[str, Any] = {}
    for dim in space.values:
        if dim == "depth":
            continue
        va, vb = a.get(dim), b.get(dim)
        if dim in space.per_layer:
            count = len(plan_a.kept)
            la = list(va) if isinstance(va, tuple) else [va] * count
            lb = list(vb) if isinstance(vb, tuple) else [vb] * count
            sizes[dim] = tuple(x if rng.random() < 0.5 else y for x, y in zip(la, lb, strict=True))
        else:
            sizes[dim] = va if rng.random() < 0.5 else vb
    source = a if rng.random() < 0.5 else b
    if source.layers is not None:
        return space.normalize(Subnet(sizes, layers=source.layers))
    return space.normalize(Subnet({**sizes, "depth": source.get("depth", space.values["depth"][-1])}))


class Evolution:
    """The search under one budget: `cost(member) <= limit`; `proxy(member)` lower is better."""

    def __init__(
        self,
        space: Any,
        cost: Callable[[Subnet], float],
        limit: float,
        proxy: Callable[[Subnet], float],
        options: SearchOptions,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.space, self.cost, self.limit, self.proxy, self.options = space, cost, limit, proxy, options
        self.scores: dict[str, float] = dict(
            (state or {}).get("scores", {})
        )  # member -> proxy, every one scored
        self.population: list[str] = list((state or {}).get("population", []))
        self.generation = int((state or {}).get("generation", 0))

    def state(self) -> dict[str, Any]:
        return {"scores": self.scores, "population": self.population, "generation": self.generation}

    @property
    def evaluations(self) -> int:
        return len(self.scores)

    def _score(self, member: Subnet) -> float:
        key = str(member)
        if key not in self.scores:
            self.scores[key] = float(self.proxy(member))
        return self.scores[key]

    def fits(self, member: Subnet) -> bool:
        return self.cost(member) <= self.limit

    def start(self) -> None:
        """The first population: the uniform members within the budget (the cheapest first), then random draws."""
        if self.population:
            return
        rng = np.random.default_rng([self.options.seed, 0, 7])
        chosen = [m for m in self.space.subnets() if self.fits(m)][-self.options.population :]
        tries = 0
        while len(chosen) < self.options.population and tries < 50 * self.options.population:
            tries += 1
            member = self.space.sample_member(rng) if self.space.per_layer else self.space.sample(1, rng)[0]
            if self.fits(member) and member not in chosen:
                chosen.append(member)
        self.population = self._ranked(chosen)

    def _ranked(self, members: Iterable[Subnet]) -> list[str]:
        unique = {str(m): m for m in members}
        return sorted(unique, key=lambda k: (self._score(unique[k]), k))

    def step(self) -> None:
        """One generation: the better half are parents; their mutations and crossovers fill the rest."""
        self.generation += 1
        rng = np.random.default_rng([self.options.seed, self.generation])
        parents = [Subnet.parse(k) for k in self.population[: max(2, len(self.population) // 2)]]
        children: list[Subnet] = []
        tries = 0
        while len(parents) + len(children) < self.options.population and tries < 50 * self.options.population:
            tries += 1
            if rng.random() < 0.5:
                child = mutate(
                    self.space, parents[int(rng.integers(len(parents)))], rng, self.options.mutation
                )
            else:
                i, j = rng.choice(len(parents), size=2, replace=False)
                child = crossover(self.space, parents[int(i)], parents[int(j)], rng)
            if self.fits(child) and str(child) not in self.population:
                children.append(child)
        self.population = self._ranked([*parents, *children])

    def finalists(self, n: int) -> list[Subnet]:
        return [Subnet.parse(k) for k in self.population[:n]]


def spearman(a: Iterable[float], b: Iterable[float]) -> float:
    """Rank correlation (average ranks for ties); nan for fewer than 3 pairs."""
    x, y = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    if len(x) < 3:
        return float("nan")

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])
