"""The frozen teacher of distillation (`train.distill.teacher`), built before the model is nested.

- a folder or Hub id: a fine-tuned model of the run's class, loaded as the run's model is;
- `finetune`: the run's model itself fine-tuned alone for `train.distill.teacher_steps` (DynaBERT, Minitron
  distil from the fine-tuned full model): the teacher is that model, frozen, and the nested model starts from
  its weights. It is written to `<run>/teacher.safetensors`, so that a resumed run distils from the same one;
- with `train.distill.teacher_class`, or for a stitched run: a plain model of that class (the anchors' class)
  loaded from the folder or Hub id, with the data's labels (DeiT's RegNetY-16GF teacher).

A teacher of the run's class reads its inputs as the nested model does (mean pooling included): it is nested
with a space of one member, the largest.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from ..api import load, nest
from ..many import MemberSpace
from ..spec import NestingSpace
from ..tasks import Task
from .alone import train_alone
from .models import ModelSpec
from .options import TEACHER_PHASE, Distill

FILE = "teacher.safetensors"


def largest_only(space: MemberSpace) -> NestingSpace:
    return NestingSpace({d: [v[-1]] for d, v in space.values.items()})  # type: ignore[attr-defined]


def build_teacher(
    options: Distill,
    spec: ModelSpec,
    model: nn.Module,
    space: MemberSpace,
    data: Any,
    task: Task,
    seed: int,
    lr: float,
    run_dir: Path,
    resuming: bool,
) -> nn.Module:
    """The frozen teacher (eval mode, no gradients). With the teacher phase `model` is fine-tuned in place first
    (unless resuming: the checkpoint holds the student's weights and the run folder the teacher)."""
    saved = run_dir / FILE
    if options.teacher_class is not None:
        return frozen_teacher(options, options.teacher_class, data)
    if options.teacher == TEACHER_PHASE:
        if resuming and saved.is_file():
            teacher = load(saved)
        else:
            teacher = nest(copy.deepcopy(model), largest_only(space), pooling=spec.pooling, bn=spec.bn)
            what = f"train.distill.teacher={TEACHER_PHASE}: the full model, {options.teacher_steps} steps,"
            train_alone(what, teacher, data, task, options.teacher_steps, options.teacher_lr or lr, seed)
            model.load_state_dict(teacher.base_state_dict())  # the nested model starts from the teacher
            rank_zero_only(teacher.save)(saved)
    else:
        loaded = ModelSpec(spec.class_name, pretrained=options.teacher).build(data.model_kwargs())
        teacher = nest(loaded, largest_only(space), pooling=spec.pooling, bn=spec.bn)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def frozen_teacher(options: Distill, class_name: str, data: Any) -> nn.Module:
    """A plain (not nested) model of `class_name` loaded from `options.teacher`, frozen, in eval mode. A teacher of
    another class gets only the data's labels; one of the run's class everything the run's model gets."""
    kwargs = data.model_kwargs()
    if options.teacher_class is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in ("num_labels", "id2label", "label2id")}
    teacher = ModelSpec(class_name, pretrained=options.teacher).build(kwargs).eval()
    teacher.requires_grad_(False)
    return teacher
