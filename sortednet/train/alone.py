"""Train a plain model alone for a number of steps on the run's training data, before a many-in-one model is made
from it: the anchors of a stitched model built from a config (`stitch.pretrain_steps`), the teacher of
distillation (`train.distill.teacher=finetune`)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from ..data.loader import epoch_order
from ..tasks import Task
from .console import phase, say


def train_alone(what: str, model: nn.Module, data: Any, task: Task, steps: int, lr: float, seed: int) -> None:
    """`steps` AdamW steps (warm-up 20 steps, then linear decay to 0.1 x lr, gradient norm clipped at 1) in epochs
    of the seed's order, the same on every rank; `what` names the phase in the line it prints."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.9 * (1 - s / steps))
    )
    train, size = data.train_set, data.batch_size
    collate = data.collate_fn or default_collate
    model.train()
    start, step, epoch, first, loss = time.perf_counter(), 0, 0, None, torch.tensor(float("nan"))
    with phase(f"{what}, training alone", steps) as advance:
        while step < steps:
            order = epoch_order(
                len(train), data.seed, 1000 + epoch
            ).tolist()  # not the run's own epoch orders
            for i in range(0, len(order) - size + 1, size):
                batch = collate([train[j] for j in order[i : i + size]])
                loss = task.model_loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                first = float(loss.detach()) if first is None else first
                step += 1
                advance(1)
                if step == steps:
                    break
            epoch += 1
    say(
        f"{what} trained alone, loss {first:.3f} -> {float(loss.detach()):.3f} in {time.perf_counter() - start:.1f} s"
    )
