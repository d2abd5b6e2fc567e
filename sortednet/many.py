"""The interface a many-in-one model offers: what the trainer, evaluator, selector and checkpoint code use.

Nested models (`sortednet.nest`) and stitched models (`sortednet.stitch`) both implement it; code that
only needs "a model with a space of members" takes a `ManyInOne` and never asks which kind it has.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

import numpy as np

Member = Hashable  # a Subnet of a nesting space, a Stitch of a stitch space: hashable, str() is its spelling


@runtime_checkable
class MemberSpace(Protocol):
    """Every member of a many-in-one model, cheapest first (exact parameter count once bound to a model)."""

    @property
    def dims(self) -> tuple[str, ...]: ...

    @property
    def largest(self) -> Member: ...

    @property
    def smallest(self) -> Member: ...

    def subnets(self) -> list[Any]: ...

    def costs(self) -> np.ndarray: ...

    def cost(self, member: Any) -> float: ...

    def normalize(self, member: Any) -> Any:
        """The space's own spelling of a member (given as text or object); a one-line ValueError if outside."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __contains__(self, member: object) -> bool: ...

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class ManyInOne(Protocol):
    """A module holding many members; `use(member)` picks the one whose forward runs.

    `metadata` is carried into the one-file checkpoint; `header()` is what `save()` writes beside the tensors
    and what `sortednet.load` reads to rebuild the model; `state_dict()`/`load_state_dict()` are nn.Module's
    (Lightning's exact resume)."""

    space: MemberSpace
    metadata: dict[str, Any]

    def activate(self, member: Any) -> Any: ...

    def use(self, member: Any) -> AbstractContextManager[Any]: ...

    def num_params(self, member: Any) -> int: ...

    def base_state_dict(self) -> dict[str, Any]: ...

    def header(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]: ...

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
