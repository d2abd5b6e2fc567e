"""The `stitch` section of sortednet-train: the anchors, how they are stitched, and the steps before training.

    stitch:
      anchors: {small: {class_name: ..., config: {...}}, large: {class_name: ..., pretrained: ...}}
      mode: snnet               # | snnetv2 | fast_to_slow | two_way   (sortednet.stitch.StitchConfig)
      window: 2
      stride: 1
      share: null               # position | stitch; null: the mode's own (snnet: position)
      lora_rank: 0
      lora_alpha: 1.0           # the LoRA update scaled by lora_alpha / lora_rank
      calibration_batches: 4    # least-squares init of the stitching layers on the first training batches
      pretrain_steps: 0         # > 0: train each anchor alone first (for anchors built from a config)
      pretrain_lr: 2.0e-3
      members: null             # a list of stitches and anchors: train only these (e.g. one stitch alone,
                                # from the same anchors and least-squares init); null: every member

Every value is checked before anything is built (`Stitching.from_config`); the space (anchors ordered by
exact parameter count, from models built on the meta device) is known then too, so the sampler, validation
members and a resumed checkpoint are checked against it. A resumed run neither pretrains nor calibrates: its
weights come from the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..checks import number
from ..data.loader import first_batches
from ..stitch import StitchConfig, StitchedModel, StitchSpace, stitch
from ..stitch.anchors import check_anchors, layer_list, parts_of
from ..stitch.space import AnchorInfo
from ..tasks import Task
from .alone import train_alone
from .console import phase, say
from .models import ModelSpec

OWN_KEYS = ("anchors", "calibration_batches", "pretrain_steps", "pretrain_lr", "members")


@dataclass
class Stitching:
    anchors: dict[str, ModelSpec]
    config: StitchConfig
    calibration_batches: int = 4
    pretrain_steps: int = 0
    pretrain_lr: float = 2e-3
    members: list[str] | None = None

    @classmethod
    def from_config(cls, node: Mapping[str, Any]) -> Stitching:
        node = dict(node)
        anchors = node.pop("anchors", None)
        if not isinstance(anchors, Mapping) or len(anchors) < 2:
            raise ValueError(
                f"stitch.anchors={anchors!r}; allowed: a mapping of two or more names to model specs"
            )
        specs = {}
        for name, entry in anchors.items():
            entry = {k: v for k, v in dict(entry).items() if k != "_target_"}
            try:
                specs[str(name)] = ModelSpec(**entry)
            except (TypeError, ValueError) as err:
                raise ValueError(f"stitch.anchors.{name}: {err}") from None
        own = {k: node.pop(k) for k in OWN_KEYS if k in node}
        stitching = cls(specs, StitchConfig(**node), **own)
        number("stitch.calibration_batches", stitching.calibration_batches, int, low=0)
        number("stitch.pretrain_steps", stitching.pretrain_steps, int, low=0)
        number("stitch.pretrain_lr", stitching.pretrain_lr, float, low=0, low_open=True)
        return stitching

    def _meta_models(self, data_kwargs: Mapping[str, Any] | None) -> dict[str, nn.Module]:
        """The anchors with meta-device parameters, from their configs alone (no weights read or downloaded)."""
        import transformers

        from .. import hf

        models = {}
        for name, spec in self.anchors.items():
            kwargs = {**(spec.config or {}), **(data_kwargs or {})}
            model_type = kwargs.pop("model_type", None)
            if spec.pretrained:
                config = transformers.AutoConfig.from_pretrained(spec.pretrained, **kwargs)
            else:
                config = transformers.CONFIG_MAPPING[model_type](**kwargs)
            models[name] = hf.empty_model(getattr(transformers, spec.class_name), config)
            models[name].tie_weights()  # a tied head counts once, as in the built model
        return models

    def space(self, data_kwargs: Mapping[str, Any] | None = None) -> StitchSpace:
        """The stitch space (exact costs) from the anchors built on the meta device; the anchors are checked."""
        models = self._meta_models(data_kwargs)
        kind = check_anchors(list(models.values()), list(models))
        parts = {n: parts_of(m, kind) for n, m in models.items()}
        order = sorted(models, key=lambda n: parts[n].total)
        infos = [AnchorInfo(n, len(layer_list(models[n])), int(models[n].config.hidden_size)) for n in order]
        space = StitchSpace(infos, self.config)
        if self.members is not None:
            space = StitchSpace(infos, self.config, self._checked_members(space))
        space.bind(parts)
        return space

    def _checked_members(self, full: StitchSpace) -> list[str]:
        members = self.members
        if not isinstance(members, list) or not members or len(set(map(str, members))) < len(members):
            raise ValueError(f"stitch.members={members!r}; allowed: a list of distinct members, or null")
        try:
            return [str(full.normalize(m)) for m in members]
        except ValueError as err:
            raise ValueError(f"stitch.members: {err}") from None

    def build(self, data: Any, task: Task, seed: int, resuming: bool) -> StitchedModel:
        models = {n: s.build(data.model_kwargs()) for n, s in self.anchors.items()}
        if resuming:  # the checkpoint holds the trained anchors and stitching layers
            return stitch(models, config=self.config)
        for i, (name, model) in enumerate(models.items()):
            if self.pretrain_steps:
                train_alone(
                    f"stitch.pretrain_steps={self.pretrain_steps}: anchor {name}",
                    model,
                    data,
                    task,
                    self.pretrain_steps,
                    self.pretrain_lr,
                    seed + i,
                )
        batches = first_batches(data, self.calibration_batches) if self.calibration_batches else None
        start = time.perf_counter()
        what = (
            f"stitch: fitting the stitching layers on {len(batches)} training batches"
            if batches
            else "stitch"
        )
        with phase(what):
            stitched = stitch(models, batches, config=self.config, members=self.members)
        say(
            f"stitch: {len(stitched.space)} members over anchors {', '.join(stitched.anchors)}, "
            + (
                f"stitching layers fitted by least squares on {len(batches)} training batches "
                f"in {time.perf_counter() - start:.1f} s"
                if batches
                else "stitching layers at random init (stitch.calibration_batches=0)"
            )
        )
        return stitched
