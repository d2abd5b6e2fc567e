"""Maestro training of factorised projections: ordered dropout per layer, the hierarchical group lasso
that pushes importance into the leading rank components, and progressive shrinking that cuts the
trailing components whose importance stays negligible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .layers import LowRankLinear
from .nest import NestedModel


def low_rank_modules(nested: NestedModel) -> list[LowRankLinear]:
    return list(nested.low_rank_modules().values())


def group_lasso(nested: NestedModel) -> torch.Tensor:
    """sum over layers and b of ||(U[:, b:cap], V[b:cap])||: every tail of the ordered components is a group,
    so a component is penalised once per group it is in, the trailing ones most."""
    total = None
    for module in low_rank_modules(nested):
        cap = module.cap
        nested.state.touch(module.U, (0, module.full_out), (0, cap))  # for optim.update=touched
        nested.state.touch(module.V, (0, cap), (0, module.full_in))
        sq = module.U[:, :cap].pow(2).sum(0) + module.V[:cap].pow(2).sum(1)
        tails = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])
        term = tails.clamp_min(1e-12).sqrt().sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def importance(module: LowRankLinear) -> torch.Tensor:
    """|U[:, i]| |V[i]| per component: its singular value when U V is an SVD."""
    with torch.no_grad():
        return module.U.norm(dim=0) * module.V.norm(dim=1)


def sample_layer_ranks(nested: NestedModel, rng: np.random.Generator | None) -> None:
    """Ordered dropout per layer (Maestro): each factorised projection draws its own rank b uniformly in 1..r, r its
    rank under the active subnet (its cut applied); None clears the draws."""
    for module in low_rank_modules(nested):
        module.sampled = None
        if rng is None:
            continue
        module.sampled = int(rng.integers(1, module.rank() + 1))


@dataclass
class Shrinker:
    """Every `every` optimizer steps, find in each factorised projection the first component from which all
    have importance < threshold x the largest; after `patience` such checks in a row, cut there."""

    every: int = 0
    threshold: float = 1e-3
    patience: int = 3
    min_rank: int = 1
    strikes: dict[str, int] = field(default_factory=dict)

    def step(self, nested: NestedModel, global_step: int) -> dict[str, int]:
        """Returns the cuts made now ({projection: new cap})."""
        if self.every <= 0 or global_step == 0 or global_step % self.every:
            return {}
        cuts = {}
        for name, module in nested.low_rank_modules().items():
            score = importance(module)[: module.cap]
            keep = score >= self.threshold * score.max()
            first_tail = int(keep.nonzero().max()) + 1 if keep.any() else 1
            first_tail = max(first_tail, self.min_rank)
            if first_tail >= module.cap:
                self.strikes[name] = 0
                continue
            self.strikes[name] = self.strikes.get(name, 0) + 1
            if self.strikes[name] >= self.patience:
                module.cap, self.strikes[name] = first_tail, 0
                cuts[name] = first_tail
        if cuts:
            nested.apply_low_rank_info(nested.low_rank_info())  # re-orders the space by the new costs
        return cuts

    def state_dict(self) -> dict[str, object]:
        return {"strikes": dict(self.strikes)}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.strikes = dict(state.get("strikes", {}))  # type: ignore[arg-type]
