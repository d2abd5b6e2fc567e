"""Samplers: which subnets train on each step.

Every draw is a pure function of (seed, optimizer step, micro-batch), so every rank of a distributed run
trains the same subnets and a resumed run continues the same sequence. A sampler's state is its settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .checks import number
from .many import MemberSpace
from .spec import Subnet

WEIGHTINGS = ("uniform", "linear", "inverse", "geometric")
COSTS = ("params", "flops", "latency")
DEFAULT_GROUPS = 8  # sampler=ros without a gap or a count of groups  # what a cost-aware sampler groups by; flops and latency are measured
MIDDLES = (
    "random",
    "cycle",
)  # sampler=sandwich: how the members between the largest and the smallest are drawn


class Sampler:
    name = "base"
    guarantees_largest = False  # the largest subnet is in every draw (needed for in-place distillation)
    cost = "params"  # what the draws depend on besides the order: measured by the trainer unless params

    def __init__(self, space: MemberSpace, k: int = 1, seed: int = 0) -> None:
        number("sampler.k", k, int, low=1, high=len(space))
        self.k, self.seed = int(k), int(number("seed", seed, int, low=0))
        self.space: MemberSpace | None = None
        self.member_costs: dict[str, float] | None = None
        self.bind(space)

    def set_costs(self, costs: Mapping[Any, float] | Sequence[float]) -> Sampler:
        """Measured costs (`sampler.cost`: FLOPs per sample, latency in ms): a mapping member -> cost, or values
        aligned with `space.subnets()`. sortednet-train measures them once the model is built."""
        if not isinstance(costs, Mapping):
            values = list(costs)
            if len(values) != len(self.ordered):
                raise ValueError(f"{len(values)} costs for {len(self.ordered)} members; give one per member")
            costs = dict(zip(self.ordered, values, strict=True))
        given = {str(m): number(f"cost of {m}", v, low=0, low_open=True) for m, v in costs.items()}
        missing = [str(m) for m in self.ordered if str(m) not in given]
        if missing:
            raise ValueError(
                f"sampler.cost={self.cost}: no cost for {missing[0]} ({len(missing)} members lack one)"
            )
        self.member_costs = given
        self._tables()
        return self

    def _costs(self) -> np.ndarray | None:
        """The costs aligned with `self.ordered`: the space's parameter counts, the measured ones, or None."""
        if self.member_costs is not None:
            return np.asarray([self.member_costs[str(m)] for m in self.ordered], dtype=np.float64)
        return np.asarray(self.space.costs(), dtype=np.float64) if self.cost == "params" else None

    def _unmeasured(self) -> RuntimeError:
        return RuntimeError(
            f"sampler {self.name!r} groups by cost={self.cost}, not measured yet: sampler.set_costs(...) (sortednet-"
            "train measures it when the model is built)"
        )

    def bind(self, space: MemberSpace) -> Sampler:
        """Draw from `space`: the space the options were checked against, or the same members bound to the model
        (a nested model's space orders its members by exact parameter count). Nothing is checked again."""
        if self.space is not None and space.to_dict() != self.space.to_dict():
            raise ValueError(
                f"sampler {self.name!r}: the model's space {space.to_dict()} is not the configured "
                f"{self.space.to_dict()}"
            )
        self.space = space
        self.ordered = space.subnets()
        self.largest = space.normalize(space.largest)
        self.smallest = space.normalize(space.smallest)
        self._tables()
        return self

    def _tables(self) -> None:
        """What a sampler derives from the ordered members (strata, probabilities); after every bind."""

    def rng(self, step: int, micro: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(step), int(micro)])

    def sample(self, step: int, micro: int = 0) -> list[Subnet]:
        """The subnets for one micro-batch of optimizer step `step`; the largest (if drawn) comes first."""
        return self._draw(self.rng(step, micro))

    def _draw(self, rng: np.random.Generator) -> list[Subnet]:
        raise NotImplementedError

    def _pick(self, rng: np.random.Generator, candidates: list[Subnet], n: int, p=None) -> list[Subnet]:
        n = min(n, len(candidates))
        return [candidates[i] for i in rng.choice(len(candidates), size=n, replace=False, p=p)]

    def _largest_first(self, subnets: list[Subnet]) -> list[Subnet]:
        return sorted(subnets, key=lambda s: s != self.largest)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "k": self.k, "seed": self.seed, "space": self.space.to_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name or state.get("space") != self.space.to_dict():
            raise ValueError(
                f"checkpoint sampler {state.get('name')!r} over {state.get('space')} does not match the configured "
                f"sampler {self.name!r} over {self.space.to_dict()}; resume with the run's own sampler and space"
            )
        self.k, self.seed = int(state["k"]), int(state["seed"])


class AllSampler(Sampler):
    """Every member on every step (largest first): as many forward/backward passes per step as the space has
    members (SortedNet trains 160 at once); the members of the uniform grid for a per-layer space."""

    name = "all"
    guarantees_largest = True

    def __init__(self, space: MemberSpace, k: int | None = None, seed: int = 0) -> None:
        super().__init__(space, len(space), seed)

    def _draw(self, rng: np.random.Generator) -> list[Subnet]:
        return self._largest_first(list(self.ordered))


class UniformSampler(Sampler):
    """K distinct subnets uniformly at random."""

    name = "uniform"

    def _draw(self, rng: np.random.Generator) -> list[Subnet]:
        return self._largest_first(self._pick(rng, self.ordered, self.k))


class SandwichSampler(Sampler):
    """Largest + smallest + K-2 others (the sandwich rule of US-Nets). The others are drawn at random
    (`middle="random"`), or taken in turn from a cycle through every other member (`middle="cycle"`: a new
    order each round, so each is trained once every ceil(n / (K-2)) steps instead of 1 in n/(K-2) on average).
    `per_layer=True`: the others are drawn with a size per layer (a space with `per_layer` dimensions)."""

    name = "sandwich"
    guarantees_largest = True

    def __init__(
        self, space: MemberSpace, k: int = 4, seed: int = 0, middle: str = "random", per_layer: bool = False
    ) -> None:
        if k < 2 and len(space) > 1:
            raise ValueError(f"sampler.k={k} is too small for sampler=sandwich; allowed: k >= 2")
        if middle not in MIDDLES:
            raise ValueError(f"sampler.middle={middle!r} is unknown; allowed: {', '.join(MIDDLES)}")
        if per_layer and not getattr(space, "per_layer", ()):
            raise ValueError(
                "sampler.per_layer=true draws sizes per layer, but the nesting space has none; allowed with "
                "nesting.per_layer=[ffn, heads, ...], else sampler.per_layer=false"
            )
        if per_layer and middle != "random":
            raise ValueError(
                "sampler.per_layer=true draws its members at random; allowed: sampler.middle=random"
            )
        self.middle_order, self.per_layer = middle, bool(per_layer)
        super().__init__(space, k, seed)

    def _tables(self) -> None:
        self.middle = [s for s in self.ordered if s not in (self.largest, self.smallest)]

    def sample(self, step: int, micro: int = 0) -> list[Subnet]:
        if self.middle_order == "random":
            return super().sample(step, micro)
        ends = [self.largest] if self.largest == self.smallest else [self.largest, self.smallest]
        per_step, n = self.k - len(ends), len(self.middle)
        if not n or per_step < 1:
            return ends
        picks = []
        for slot in range(step * per_step, step * per_step + min(per_step, n)):
            turn, place = divmod(slot, n)  # one round: every middle member once, in the round's own order
            order = np.random.default_rng([self.seed, turn, 1]).permutation(n)
            picks.append(self.middle[int(order[place])])
        return ends + list(dict.fromkeys(picks))

    def _draw(self, rng: np.random.Generator) -> list[Subnet]:
        ends = [self.largest] if self.largest == self.smallest else [self.largest, self.smallest]
        if self.per_layer:  # Flextron / OFA: every layer draws its own sizes
            return ends + [self.space.sample_member(rng) for _ in range(self.k - len(ends))]  # type: ignore[union-attr]
        return ends + self._pick(rng, self.middle, self.k - len(ends))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.middle_order != "random":
            state["middle"] = self.middle_order
        return {**state, "per_layer": True} if self.per_layer else state


class SortedSampler(Sampler):
    """SortedNet: K draws from a distribution over the cost-ordered list.

    weighting: uniform, linear (p grows with cost rank: favours large), inverse (p ~ 1/rank: favours
    small) or geometric (p ~ ratio**rank).
    """

    name = "sorted"

    def __init__(
        self, space: MemberSpace, k: int = 1, seed: int = 0, weighting: str = "uniform", ratio: float = 0.9
    ):
        if weighting not in WEIGHTINGS:
            raise ValueError(f"sampler.weighting={weighting!r} is unknown; allowed: {', '.join(WEIGHTINGS)}")
        self.weighting, self.ratio = weighting, number("sampler.ratio", ratio, low=0, low_open=True)
        super().__init__(space, k, seed)

    def _tables(self) -> None:
        rank = np.arange(1, len(self.ordered) + 1, dtype=np.float64)
        weights = {
            "uniform": np.ones_like(rank),
            "linear": rank,
            "inverse": 1 / rank,
            "geometric": self.ratio**rank,
        }
        self.probs = weights[self.weighting] / weights[self.weighting].sum()

    def _draw(self, rng: np.random.Generator) -> list[Subnet]:
        return self._largest_first(self._pick(rng, self.ordered, self.k, p=self.probs))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "weighting": self.weighting, "ratio": self.ratio}


def _cost_kind(cost: str) -> str:
    if cost not in COSTS:
        raise ValueError(f"sampler.cost={cost!r} is unknown; allowed: {', '.join(COSTS)}")
    return cost


class BudgetSampler(Sampler):
    """Stratified by cost: the log-cost range is cut into K equal strata and one subnet is drawn from each,
    so small and large regions of a combinatorial space are both visited every step.

    `cost`: params (the space's exact counts), flops (per sample) or latency (ms), measured when the model is
    built (sortednet-train) or given as `costs` (aligned with `space.subnets()`).

    `groups=G`: the log-cost range is cut into G groups and each draw picks K distinct non-empty groups
    uniformly, then one member in each (with K < G, a step visits only some groups; over steps every group is
    equally likely whatever its size). SN-Netv2's own grouping (a fixed FLOPs gap) is sampler=ros.
    """

    name = "budget"

    def __init__(
        self,
        space: MemberSpace,
        k: int = 4,
        seed: int = 0,
        costs: np.ndarray | None = None,
        groups: int | None = None,
        cost: str = "params",
    ) -> None:
        self.groups = None if groups is None else number("sampler.groups", groups, int, low=1)
        self.cost = _cost_kind(cost)
        super().__init__(space, k, seed)
        if costs is not None:
            self.set_costs(np.asarray(costs, dtype=np.float64))

    def _tables(self) -> None:
        costs = self._costs()
        if costs is None:
            self.strata = None
            return
        n = self.groups or self.k
        cost = np.log(costs)
        edges = np.linspace(cost.min(), cost.max(), n + 1)
        bins = np.clip(np.searchsorted(edges, cost, side="right") - 1, 0, n - 1)
        strata = [np.flatnonzero(bins == b) for b in range(n)]
        self.strata = [s for s in strata if len(s)]

    def _draw(self, rng: np.random.Generator) -> list[Subnet]:
        if self.strata is None:
            raise self._unmeasured()
        strata = self.strata
        if self.groups is not None:
            strata = [
                strata[i] for i in rng.choice(len(strata), size=min(self.k, len(strata)), replace=False)
            ]
        picks = [int(rng.choice(s)) for s in strata]
        extra = self.k - len(picks)  # empty strata: fill with distinct draws from the whole space
        if extra > 0:
            rest = [i for i in range(len(self.ordered)) if i not in picks]
            picks += [int(i) for i in rng.choice(rest, size=min(extra, len(rest)), replace=False)]
        return self._largest_first([self.ordered[i] for i in picks])

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), **({"groups": self.groups} if self.groups else {})}
        return {**state, "cost": self.cost} if self.cost != "params" else state


class GroupSampler(Sampler):
    """SN-Netv2's resource-constrained sampling (ROS): the members sorted by cost are cut into groups, a new group
    starting where the cost exceeds the group's first by more than `gap` (the authors' `group_subnets_by_flops`,
    1 GFLOPs for DeiT: `cost=flops gap=1e9`), or into `groups` equal-width cost ranges; each draw picks a group
    uniformly, then a member of it uniformly (K draws: K distinct groups). A range crowded with members is then
    trained as often as a sparse one. Neither gap nor groups: 8 groups.

    `cost`: flops (per sample, counted by torch.utils.flop_counter when the model is built), params (the space's
    exact counts) or latency (ms, measured on the build device); `gap` is in that unit. The groups are part of
    the sampler's state: a resumed run keeps them."""

    name = "ros"

    def __init__(
        self,
        space: MemberSpace,
        k: int = 1,
        seed: int = 0,
        cost: str = "params",
        gap: float | None = None,
        groups: int | None = None,
        costs: Mapping[Any, float] | Sequence[float] | None = None,
    ) -> None:
        if gap is not None and groups is not None:
            raise ValueError(
                f"sampler.gap={gap!r} with sampler.groups={groups!r}; allowed: one of them (a cost gap that starts "
                "a new group, or a number of equal-width groups), or neither (8 groups)"
            )
        groups = DEFAULT_GROUPS if gap is None and groups is None else groups
        self.gap = None if gap is None else number("sampler.gap", gap, low=0)
        self.n_groups = None if groups is None else number("sampler.groups", groups, int, low=1)
        self.cost = _cost_kind(cost)
        super().__init__(space, k, seed)
        if costs is not None:
            self.set_costs(costs)

    def _tables(self) -> None:
        costs = self._costs()
        self.grouped: list[list[int]] | None = None
        if costs is None:
            return
        order = np.argsort(costs, kind="stable")
        groups: list[list[int]] = []
        if self.gap is not None:
            first = None
            for i in order:
                if first is None or costs[i] - first > self.gap:
                    groups.append([])
                    first = costs[i]
                groups[-1].append(int(i))
        else:
            width = (costs.max() - costs.min()) / self.n_groups
            bins = (
                np.minimum(((costs - costs.min()) / width).astype(int), self.n_groups - 1)
                if width
                else 0 * order
            )
            groups = [[int(i) for i in order if bins[i] == b] for b in range(self.n_groups)]
        self.grouped = [g for g in groups if g]

    def _draw(self, rng: np.random.Generator) -> list[Subnet]:
        if self.grouped is None:
            raise self._unmeasured()
        groups = self.grouped
        chosen = rng.choice(len(groups), size=min(self.k, len(groups)), replace=False)
        picks = [groups[int(g)][int(rng.integers(len(groups[int(g)])))] for g in chosen]
        if self.k > len(picks):  # fewer groups than draws: the rest from the whole space
            rest = [i for i in range(len(self.ordered)) if i not in picks]
            picks += [int(i) for i in rng.choice(rest, size=self.k - len(picks), replace=False)]
        return self._largest_first([self.ordered[i] for i in picks])

    def group_members(self) -> list[list[Subnet]]:
        """The groups, cheapest first, each a list of members."""
        if self.grouped is None:
            raise self._unmeasured()
        return [[self.ordered[i] for i in g] for g in self.grouped]

    def state_dict(self) -> dict[str, Any]:
        how = {"gap": self.gap} if self.gap is not None else {"groups": self.n_groups}
        grouped = [[str(m) for m in g] for g in self.group_members()] if self.grouped is not None else None
        return {**super().state_dict(), "cost": self.cost, **how, "grouped": grouped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("grouped"):  # the groups as measured when the run started (latency is not repeatable)
            index = {str(m): i for i, m in enumerate(self.ordered)}
            self.grouped = [[index[name] for name in g] for g in state["grouped"]]


SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (AllSampler, UniformSampler, SandwichSampler, SortedSampler, BudgetSampler, GroupSampler)
}


def make_sampler(name: str, space: MemberSpace, **options: Any) -> Sampler:
    """The sampler called `name` (the Python API; the CLI instantiates `sampler._target_`)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is unknown; allowed: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](space, **options)
