"""Importance order before nested training (`nesting.reorder`), and block influence after it.

`nesting.reorder=activation|magnitude|taylor` permutes the pretrained (or freshly built) model by importance
(sortednet.importance) before the first step, on the first `nesting.reorder_batches` batches of the run's own
training data in epoch 0's order (the same on every rank: a function of the seed, never of the rank). The
record goes into the checkpoint metadata under "permutation". A resumed run takes it from its checkpoint
instead of calibrating again (the weights come from the checkpoint). `block_influence` on validation batches
(sortednet.importance.influence_record) is what `finish` adds to the checkpoint for sortednet-info.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate

from ..api import nest
from ..checks import number
from ..importance import METHODS, reorder
from ..nest import NestedModel
from ..permute import PERMUTABLE
from ..spec import NestingSpace
from ..tasks import Task

KEYS = ("reorder", "reorder_batches")  # the `nesting` group's keys that are not dimensions of the space


@dataclass(frozen=True)
class Reorder:
    """`nesting.reorder` (a method or None) and `nesting.reorder_batches` (calibration batches), checked."""

    method: str | None = None
    batches: int = 4

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise ValueError(
                f"nesting.reorder={self.method!r} is unknown; allowed: {', '.join(METHODS)} or null"
            )
        object.__setattr__(self, "batches", number("nesting.reorder_batches", self.batches, int, low=1))

    def check(self, space: NestingSpace) -> None:
        """Refuse a space with nothing to permute (depth and rank have no function-preserving order)."""
        if self.method is not None and not set(space.dims) & set(PERMUTABLE):
            raise ValueError(
                f"nesting.reorder={self.method} has nothing to order: the nesting space nests "
                f"{', '.join(space.dims)}; allowed: a space with {', '.join(PERMUTABLE)}, or nesting.reorder=null"
            )


def split_nesting(nesting: Mapping[str, Any]) -> tuple[dict[str, Any], Reorder]:
    """The `nesting` config as (the space's own node, the Reorder options)."""
    node = dict(nesting)
    options = {k: node.pop(k) for k in KEYS if k in node}
    return node, Reorder(options.get("reorder"), options.get("reorder_batches", 4))


def calibration_batches(data: Any, n: int) -> list[dict[str, torch.Tensor]]:
    """The first `n` training batches of epoch 0 as one process would draw them (a function of the data
    module's seed only, so every rank gets the same)."""
    from ..data.loader import epoch_order

    train = data.train_set
    order = epoch_order(len(train), data.seed, 0).tolist()
    size = data.batch_size
    chunks = [order[i : i + size] for i in range(0, min(n * size, len(order) - len(order) % size), size)]
    collate = data.collate_fn or default_collate
    return [collate([train[i] for i in chunk]) for chunk in chunks]


def task_loss(task: Task):
    """loss(model, batch) as training computes it (the task's loss on the model's logits)."""

    def loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return task.loss(model(**inputs).logits, batch["labels"])

    return loss


def stored_permutation(ckpt_path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The permutation recorded beside a Lightning checkpoint (its one-file partner), if any."""
    if not ckpt_path:
        return None
    from ..checkpoint import read_metadata
    from .checkpoint_io import one_file_path

    partner = one_file_path(ckpt_path)
    return read_metadata(partner).get("permutation") if partner.is_file() else None


def check_resume_reorder(ckpt_path: str | os.PathLike | None, options: Reorder) -> None:
    """A resumed run keeps the importance order it started with."""
    if not ckpt_path:
        return
    stored = stored_permutation(ckpt_path)
    if stored is None and not _partner_exists(ckpt_path):
        return  # nothing to compare with: the partner is gone
    method = stored.get("method") if stored else None
    if method != options.method:
        raise ValueError(
            f"nesting.reorder={options.method or 'null'} but ckpt_path={str(ckpt_path)!r} was trained with "
            f"nesting.reorder={method or 'null'}; resume with the run's own nesting.reorder"
        )


def _partner_exists(ckpt_path: str | os.PathLike) -> bool:
    from .checkpoint_io import one_file_path

    return one_file_path(ckpt_path).is_file()


def nest_for_training(
    model: nn.Module,
    space: NestingSpace,
    options: Reorder,
    data: Any,
    task: Task,
    ckpt_path: str | os.PathLike | None = None,
    **nest_options: Any,
) -> NestedModel:
    """nest(model, space, **nest_options) (pooling, head), with the importance order first when
    `options.method` is set. A space with `rank` is
    factorised from the weights at nest(), so its model is reordered before nest(); any other is reordered
    as the nested model (through its wrappers, with the pooling it trains with)."""
    if options.method is None:
        return nest(model, space, **nest_options)
    stored = stored_permutation(ckpt_path)
    if stored is not None:  # resuming: the checkpoint holds the reordered, trained weights
        nested = nest(model, space, **nest_options)
        nested.metadata["permutation"] = stored
        return nested
    batches = [] if options.method == "magnitude" else calibration_batches(data, options.batches)
    start = time.perf_counter()
    loss = task_loss(task)
    if "rank" in space.dims:
        record = reorder(model, batches, method=options.method, dims=space.dims, loss=loss)
        nested = nest(model, space, **nest_options)
        nested.metadata["permutation"] = record
    else:
        nested = nest(model, space, **nest_options)
        record = reorder(nested, batches, method=options.method, loss=loss)
    _say(
        f"nesting.reorder={options.method}: {', '.join(record['dims'])} ordered by importance on "
        f"{len(batches)} training batches in {time.perf_counter() - start:.1f} s"
    )
    return nested


def _say(line: str) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print(line, flush=True)
