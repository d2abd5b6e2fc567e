"""The distillation term of a training step (`train.distill.*`).

In place (no `teacher`): the step's largest subnet teaches the others its logits (US-Nets, SortedNet). With a
teacher (a fine-tuned full model, or a model of another class such as DeiT's RegNetY-16GF, frozen:
`train.distill.teacher`, built by sortednet.train.teacher), every subnet, the largest included, learns the
teacher's logits (`hard`: its argmax, DeiT's hard distillation) and, with `hidden > 0`, its hidden states at
matching depths (DynaBERT, TinyBERT): the embeddings and the output of each layer the sub-model keeps against
the teacher's output of that same layer, as a relative squared error (so that a model whose residual stream
grows with depth weighs its layers alike). A narrower hidden size (`hidden` nested) is compared with the
teacher's first features.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..tasks import Task
from .options import Distill


def hidden_loss(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    kept: Sequence[int],
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Mean over the matched layers of ||s - t||^2 / ||t||^2 (padding left out). `student[j]` (j >= 1) is the
    output of the sub-model's j-th layer, kept layer kept[j-1]; its teacher is `teacher[kept[j-1] + 1]`. The
    last layer's output is left to the logits term (some models normalise it, some do not)."""
    pairs = [(0, 0), *((j + 1, kept[j] + 1) for j in range(len(kept) - 1))]
    terms = []
    for s_index, t_index in pairs:
        s = student[s_index].float()
        t = teacher[t_index][..., : s.shape[-1]].float()
        if mask is not None and mask.shape == s.shape[:2]:
            keep = mask.bool()
            s, t = s[keep], t[keep]
        terms.append(((s - t) ** 2).sum() / (t**2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


class Distiller:
    """The distillation part of each subnet's objective in one micro-batch: `begin(inputs)` once (the teacher's
    forward), then `objective(subnet, output, loss, labels)` for every subnet, largest first."""

    def __init__(
        self,
        options: Distill,
        task: Task,
        teacher: nn.Module | None = None,
        kept: Callable[[Any], Sequence[int]] | None = None,
    ) -> None:
        self.options, self.task, self.teacher, self.kept = options, task, teacher, kept
        self._target: Any = None
        self._mask: torch.Tensor | None = None

    @property
    def hidden(self) -> bool:
        """Whether the subnets' forwards must return their hidden states."""
        return self.options.enabled and self.options.hidden > 0

    def begin(self, inputs: Mapping[str, torch.Tensor]) -> None:
        self._target, self._mask = None, inputs.get("attention_mask")
        if self.options.enabled and self.teacher is not None:
            with torch.no_grad():
                self._target = self.teacher(**inputs, output_hidden_states=self.hidden or None)

    def objective(self, subnet: Any, output: Any, loss: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        o = self.options
        if not o.enabled:
            return loss
        if self.teacher is None and self._target is None:  # in place: the largest (drawn first) teaches
            self._target = output.logits.detach()
            return loss
        target = self._target if self.teacher is None else self._target.logits
        kd = self.task.distill(output.logits, target, labels, o.temperature, hard=o.hard)
        objective = (1 - o.alpha) * loss + o.alpha * kd
        if self.hidden:
            kept = self.kept(subnet)  # type: ignore[misc]
            states = hidden_loss(output.hidden_states, self._target.hidden_states, kept, self._mask)
            objective = objective + o.hidden * states
        return objective
