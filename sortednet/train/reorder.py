"""`nesting.reorder`: the importance order sortednet-train applies before nested training (checked options).

`nesting.reorder=activation|magnitude|taylor` permutes the pretrained (or freshly built) model by importance
(`sortednet.nest(..., order=)`, sortednet.importance) before the first step, on the first
`nesting.reorder_batches` batches of the run's own training data in epoch 0's order (the same on every rank: a
function of the seed, never of the rank). The record goes into the checkpoint metadata under "permutation". A
resumed run takes it from its checkpoint instead of calibrating again (the weights come from the checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..api import read_metadata
from ..checks import number
from ..importance import METHODS
from ..many import MemberSpace
from ..permute import PERMUTABLE
from .checkpoint_io import one_file_path


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

    def check(self, space: MemberSpace, ckpt_path: str | os.PathLike | None) -> dict[str, Any]:
        """Refuse a space with nothing to permute (depth and rank have no function-preserving order), and a
        resume that would change the order the run started with. A resume's records (its weights are ordered
        already): {"permutation": ..., "depth_order": ...}, as its checkpoint has them."""
        if self.method is not None and not set(space.dims) & set(PERMUTABLE):
            raise ValueError(
                f"nesting.reorder={self.method} has nothing to order: the nesting space nests "
                f"{', '.join(space.dims)}; allowed: a space with {', '.join(PERMUTABLE)}, or nesting.reorder=null"
            )
        if not ckpt_path or not one_file_path(ckpt_path).is_file():
            return {}  # nothing to compare with: no resume, or the partner is gone
        meta = read_metadata(one_file_path(ckpt_path))
        stored = meta.get("permutation")
        method = stored.get("method") if stored else None
        if method != self.method:
            raise ValueError(
                f"nesting.reorder={self.method or 'null'} but ckpt_path={str(ckpt_path)!r} was trained with "
                f"nesting.reorder={method or 'null'}; resume with the run's own nesting.reorder"
            )
        return {k: meta[k] for k in ("permutation", "depth_order") if meta.get(k)}
