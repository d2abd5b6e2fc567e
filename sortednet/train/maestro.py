"""MaestroCallback: the low-rank (rank dimension) parts of training, kept out of the module's step loop.

- ordered dropout per layer (`sampling="per_layer"`): at each micro-batch every factorised projection draws
  its own rank (up to the subnet's), from (seed, step, micro) like the samplers, so ranks agree everywhere;
- the hierarchical group lasso, added once per optimizer step with weight `group_lasso`;
- progressive shrinking: trailing components whose importance stays under `threshold` x the largest for
  `patience` checks (every `shrink_every` steps) are cut; the cuts go into the one-file checkpoint.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np

from ..lowrank import Shrinker, group_lasso, sample_layer_ranks

SAMPLING = ("per_model", "per_layer")


class MaestroCallback(L.Callback):
    def __init__(
        self,
        sampling: str = "per_model",
        group_lasso: float = 0.0,
        shrink_every: int = 0,
        shrink_threshold: float = 1e-3,
        shrink_patience: int = 3,
        min_rank: int = 1,
        seed: int = 0,
    ) -> None:
        if sampling not in SAMPLING:
            raise ValueError(f"train.rank.sampling={sampling!r} is unknown; allowed: {', '.join(SAMPLING)}")
        if group_lasso < 0:
            raise ValueError(f"train.rank.group_lasso={group_lasso} is negative; allowed: >= 0")
        self.sampling, self.weight, self.seed = sampling, float(group_lasso), int(seed)
        self.shrinker = Shrinker(shrink_every, shrink_threshold, shrink_patience, min_rank)
        self.cuts: list[dict[str, Any]] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        nested = module.nested
        if self.sampling == "per_layer":
            rng = np.random.default_rng([self.seed, 7919, trainer.global_step, module.micro])
            sample_layer_ranks(nested, rng)
        if self.weight and module.micro == 0:
            penalty = group_lasso(nested)
            module.manual_backward(self.weight * penalty)
            module.log("train/group_lasso", penalty.detach(), on_step=True, on_epoch=False)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if module.micro != 0:  # not right after an optimizer step
            return
        cuts = self.shrinker.step(module.nested, trainer.global_step)
        if cuts:
            self.cuts.append({"step": trainer.global_step, "caps": cuts})
            module.nested.metadata["rank_cuts"] = self.cuts
            module.log("train/rank_cuts", float(sum(len(c["caps"]) for c in self.cuts)), on_step=True)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sample_layer_ranks(module.nested, None)

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sample_layer_ranks(module.nested, None)  # evaluate the subnets themselves

    def state_dict(self) -> dict[str, Any]:
        return {"shrinker": self.shrinker.state_dict(), "cuts": self.cuts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shrinker.load_state_dict(state.get("shrinker", {}))
        self.cuts = list(state.get("cuts", []))

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Re-apply the cuts of a resumed run (restored into `self.cuts`)."""
        if not self.cuts:
            return
        info = module.nested.low_rank_info()
        for cut in self.cuts:
            for name, cap in cut["caps"].items():
                info[name]["cap"] = cap
        module.nested.apply_low_rank_info(info)
        module.nested.metadata["rank_cuts"] = self.cuts
