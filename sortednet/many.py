"""The interface a many-in-one model offers: what the trainer, evaluator, selector and checkpoint code use.

`ManyInOneModel` is the base class of every kind (nested transformers, nested stage networks, stitched
networks): one `use()`, one `num_params()`, one `save()`. `ManyInOne` is the same interface as a Protocol, for
code that only needs "a model with a space of members" and never asks which kind it has. `Kind` is how the
public entry points (sortednet.api) see a kind: the functions that build, load and check it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from .checkpoint import write

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


class ManyInOneModel(nn.Module):
    """The base of every many-in-one kind. A subclass sets `space` and `_active`, and implements `activate`
    (switch: a few ints or references, no weight copied), `base_state_dict` and `header`."""

    space: Any

    def __init__(self) -> None:
        super().__init__()
        self.metadata: dict[str, Any] = {}  # carried into the one-file checkpoint (run config, eval table)
        self._active: Any = None

    @property
    def active(self) -> Any:
        return self._active

    def activate(self, member: Any) -> Any:
        raise NotImplementedError

    @contextmanager
    def use(self, member: Any) -> Iterator[ManyInOneModel]:
        """Run `member` inside the block; the member active before comes back after it."""
        previous = self._active
        self.activate(member)
        try:
            yield self
        finally:
            self.activate(previous)

    def num_params(self, member: Any) -> int:
        return int(self.space.cost(member))

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def tensors(self) -> dict[str, torch.Tensor]:
        """What `save()` writes: the weights, and whatever else the kind stores beside them."""
        return self.base_state_dict()

    def header(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
        """Write every member into one safetensors file (`sortednet.load` reads it back)."""
        write(path, self.tensors(), self.header(metadata))

    def summary(self) -> list[tuple[str, str]]:
        """(label, text) rows that say what the model is made of (sortednet-info prints them)."""
        return []

    def layer_host(self) -> tuple[nn.Module, Any] | None:
        """The transformers model whose layer list the largest member runs, and the family that finds that
        list (block influence); None where the kind has no such list."""
        return None


@dataclass(frozen=True)
class Kind:
    """One kind of many-in-one model as the public entry points see it (registered in sortednet.api).

    `name` is the checkpoint header's `kind`; `takes(family)` says whether `nest` builds this kind for a family
    (a stitched model is made by `stitch()`, not by nest); the rest build, rebuild and check it."""

    name: str
    takes: Callable[[Any], bool]
    nest: Callable[..., ManyInOneModel] | None
    empty: Callable[[Mapping[str, Any]], ManyInOneModel]  # as a header says, parameters on the meta device
    load: Callable[[Path, Mapping[str, Any]], ManyInOneModel]
    read_submodel: Callable[[Path, Mapping[str, Any], Any], nn.Module]
    check_header: Callable[[Path, Mapping[str, Any]], None]
    check_family: Callable[..., Any] | None = None  # (config, family, class, dims, seed, kind) -> report
    quick_check: Callable[..., None] | None = None  # (family, model, dims, kind): cheap form, run by nest()
