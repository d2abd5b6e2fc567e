"""Tasks: the loss, the in-place distillation term and the evaluation metrics, from logits and labels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100


class Task:
    name = "task"
    metric = "loss"  # the headline metric of this task
    higher_is_better = False

    def outputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and labels aligned as (N, C) and (N,)."""
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against class ids, or against class probabilities when `labels` are float (the soft
        targets of mixup, cutmix and label smoothing, one row per example)."""
        if labels.is_floating_point():
            with torch.autocast(logits.device.type, enabled=False):
                x = logits.reshape(-1, logits.shape[-1]).float()
                return F.cross_entropy(x, labels.reshape(-1, labels.shape[-1]).float())
        x, y = self.outputs(logits, labels)
        with torch.autocast(logits.device.type, enabled=False):
            return F.cross_entropy(x.float(), y, ignore_index=IGNORE)

    def model_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss training computes for `batch` (the task's loss on the model's logits)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return self.loss(model(**inputs).logits, batch["labels"])

    def distill(
        self,
        logits: torch.Tensor,
        teacher: torch.Tensor,
        labels: torch.Tensor,
        temperature: float,
        hard: bool = False,
    ) -> torch.Tensor:
        """KL(teacher || student) at temperature T, scaled by T^2, over the positions that have a label (every
        row under soft labels); `hard`: cross-entropy against the teacher's argmax (DeiT's hard distillation, no
        temperature). In float32 whatever the logits' dtype (bf16 / fp16 under mixed precision), autocast off."""
        if labels.is_floating_point():
            x, t = logits.reshape(-1, logits.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
            keep = torch.ones(len(x), dtype=torch.bool, device=x.device)
        else:
            x, y = self.outputs(logits, labels)
            t, _ = self.outputs(teacher, labels)
            keep = y != IGNORE
        with torch.autocast(logits.device.type, enabled=False):
            if hard:
                return F.cross_entropy(x[keep].float(), t[keep].argmax(-1))
            student = F.log_softmax(x[keep].float() / temperature, dim=-1)
            target = F.log_softmax(t[keep].float() / temperature, dim=-1)
            kl = F.kl_div(student, target, log_target=True, reduction="batchmean")
        return kl * temperature**2

    def stats(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Sums to accumulate over an evaluation: [loss sum, correct, count]."""
        x, y = self.outputs(logits, labels)
        keep = y != IGNORE
        x, y = x[keep].float(), y[keep]
        loss = F.cross_entropy(x, y, reduction="sum")
        correct = (x.argmax(-1) == y).sum()
        return torch.stack(
            [loss.detach(), correct.to(loss.dtype), torch.tensor(float(len(y)), device=x.device)]
        )

    def summarize(self, sums: torch.Tensor) -> dict[str, float]:
        loss, correct, count = (float(v) for v in sums)
        count = max(count, 1.0)
        return {"loss": loss / count, "accuracy": correct / count}


class Classification(Task):
    name = "classification"
    metric = "accuracy"
    higher_is_better = True


class CausalLM(Task):
    name = "causal_lm"
    metric = "perplexity"

    def outputs(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)

    def summarize(self, sums: torch.Tensor) -> dict[str, float]:
        out = super().summarize(sums)
        return {
            "loss": out["loss"],
            "perplexity": math.exp(min(out["loss"], 50.0)),
            "accuracy": out["accuracy"],
        }


TASKS = {"text_classification": Classification, "image_classification": Classification, "causal_lm": CausalLM}


def task_for(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"task {name!r} is unknown; allowed: {', '.join(TASKS)}")
    return TASKS[name]()
