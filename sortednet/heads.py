"""Per-depth heads: each depth of the space reads its last hidden states through its own copy of the head.

A shared head must map the outputs of layer 2 and of layer 6 alike, and the deepest sub-model's gradient wins:
on a pretrained encoder the shallow sub-models then stay near chance (see BENCHMARKS.md, quality). With
`nest(..., head="per_depth")` the head modules (the pooler or first-token reader, and the top model's own modules
outside the encoder: a classifier, an untied LM head) are wrapped in `DepthHeads`: the full depth keeps the
original module (its keys are unchanged), every other depth d gets a copy under `<path>.depth_heads.<d>`.

A sub-model counts and exports only its own depth's head: `head_aliases` maps the plain model's keys to the
copy's, so the exported model is a plain transformers model of the same class.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from .layers import NestState, Wrapper

HEADS = ("shared", "per_depth")
COPIES = "depth_heads"


class DepthHeads(Wrapper):
    """Runs `base_layer` at the full depth and the copy for the active depth otherwise."""

    def __init__(
        self, base_layer: nn.Module, state: NestState, depths: Sequence[int], full_depth: int
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.state = state
        self.full_depth = full_depth
        self.depth_heads = nn.ModuleDict(
            {str(d): copy.deepcopy(base_layer) for d in depths if d != full_depth}
        )

    def head(self, depth: int) -> nn.Module:
        return self.base_layer if depth == self.full_depth else self.depth_heads[str(depth)]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.head(self.state.depth)(*args, **kwargs)


def check_head(model: nn.Module, head: str | None, dims: Iterable[str], reader: str | None) -> list[str]:
    """The paths of the head modules to copy per depth ([] for a shared head); a one-line ValueError if the
    option cannot apply to this model and space."""
    if head in (None, "shared"):
        return []
    if head not in HEADS:
        raise ValueError(f"model.head={head!r} is unknown; allowed: {', '.join(HEADS)}")
    if "depth" not in dims:
        raise ValueError(
            "model.head='per_depth' needs a nesting space over depth; this one nests " + ", ".join(dims)
        )
    paths = head_paths(model, reader)
    if not paths:
        raise ValueError(
            f"model.head='per_depth': {type(model).__name__} has no head outside its layers to copy"
        )
    inside = {id(p) for path in paths for p in model.get_submodule(path).parameters()}
    outside = [
        n
        for n, p in model.named_parameters(remove_duplicate=False)
        if id(p) in inside and not _under(n, paths)
    ]
    if outside:
        raise ValueError(
            f"model.head='per_depth': the head shares its weight with {outside[0]} (tied weights); per-depth heads "
            "need an untied head (config tie_word_embeddings=false)"
        )
    return paths


def head_paths(model: nn.Module, reader: str | None = None) -> list[str]:
    """The first-token reader (a pooler), if any, and the top model's children outside the encoder that hold
    parameters."""
    from .pooling import first_token_reader

    paths = [reader or first_token_reader(model)]
    base = model.base_model
    if base is not model:
        for name, child in model.named_children():
            if child is not base and any(True for _ in child.parameters()):
                paths.append(name)
    unique = [p for p in dict.fromkeys(paths) if p]
    return [p for p in unique if any(True for _ in model.get_submodule(p).parameters())]


def apply(
    model: nn.Module, paths: Sequence[str], state: NestState, depths: Sequence[int], full_depth: int
) -> None:
    for path in paths:
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, attr, DepthHeads(getattr(parent, attr), state, depths, full_depth))


def head_aliases(keys: Iterable[str], depth: int) -> dict[str, str]:
    """Plain sub-model key -> stored key of its depth's head copy (empty at the full depth: the original keys)."""
    marker = f".{COPIES}.{depth}."
    return {k.replace(marker, ".", 1): k for k in keys if marker in k}


def _under(name: str, paths: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in paths)
