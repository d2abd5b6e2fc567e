"""StitchSpace: which stitched networks exist (sortednet.stitch.sets, by mode) and their order by cost; the
spelling of a member is sortednet.stitch.member's."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..checks import shown
from . import sets
from .anchors import AnchorParts
from .config import StitchConfig
from .member import AnchorInfo, Stitch

__all__ = ["AnchorInfo", "Stitch", "StitchSpace"]


class StitchSpace:
    """Every stitch of the anchors (smallest anchor first) that `config` allows, the anchors included, ordered
    by parameter count: exact once `bind()` gave each anchor's parts, a proxy (12 d^2 per block) before."""

    def __init__(
        self,
        anchors: Sequence[AnchorInfo | Sequence[Any]],
        config: StitchConfig | None = None,
        members: Sequence[Stitch | str] | None = None,
    ) -> None:
        self.anchors = tuple(
            a if isinstance(a, AnchorInfo) else AnchorInfo(str(a[0]), int(a[1]), int(a[2])) for a in anchors
        )
        self.config = config or StitchConfig()
        self._by_name = {a.name: a for a in self.anchors}
        self._parts: dict[str, AnchorParts] | None = None
        # given: a checkpoint's own list, an exported network's one member, or `stitch.members`
        self._members = [
            Stitch.parse(m) for m in (sets.members(self.anchors, self.config) if members is None else members)
        ]
        self._set_order()

    # ---- stitching layers ------------------------------------------------------------------------
    def layer_keys(self, member: Stitch) -> tuple[str, ...]:
        """The stitching layers `member` runs, in order (names under `stitches.`)."""
        return tuple(sets.layer_key(join, self.config) for join in member.joins)

    def layers(self) -> dict[str, tuple[str, str]]:
        """Every stitching layer some member runs: name -> (front anchor, back anchor)."""
        out = {}
        for member in self._members:
            for join, key in zip(member.joins, self.layer_keys(member), strict=True):
                out.setdefault(key, (join.front, join.back))
        return out

    def layer_joins(self) -> dict[str, list[Stitch]]:
        """Per stitching layer, the joins whose least-squares solutions initialise it (their mean): a layer shared
        per position takes every join of that position in the mode's full set, even when `members` holds fewer,
        so that a member trained alone starts where it starts in the full model."""
        used = self.layers()
        source = self._members
        if self.config.share == "position":
            source = sets.members(self.anchors, self.config)
        out: dict[str, list[Stitch]] = {}
        for member in source:
            for join in member.joins:
                key = sets.layer_key(join, self.config)
                if key in used and join not in out.setdefault(key, []):
                    out[key].append(join)
        return out

    # ---- cost ---------------------------------------------------------------------------------
    def bind(self, parts: Mapping[str, AnchorParts]) -> None:
        """Exact parameter counts from each anchor's parts (what `stitch()` measured on the models)."""
        self._parts = dict(parts)
        self._set_order()

    @property
    def is_bound(self) -> bool:
        return self._parts is not None

    def stitch_layer_params(self, front: str, back: str) -> int:
        d_in, d_out = self._by_name[front].width, self._by_name[back].width
        rank = self.config.lora_rank
        return d_out * d_in + d_out + (rank * (d_in + d_out) if rank else 0)

    def _cost(self, member: Stitch) -> float:
        """Exact: the first segment's embeddings, each segment's blocks, each stitching layer once, the last
        anchor's head. Unbound: a proxy, 12 d^2 per block and d_in x d_out per stitching layer."""
        parts = self._parts
        if parts is None:
            w = {a.name: a.width for a in self.anchors}
            blocks = sum(
                12.0 * w[name] ** 2 * ((self._by_name[name].depth if stop is None else stop) - start)
                for name, start, stop in member.segments
            )
            return blocks + sum(w[j.front] * w[j.back] for j in member.joins)  # type: ignore[index]
        if member.is_anchor:
            return float(parts[member.front].total)
        layers = dict(zip(self.layer_keys(member), member.joins, strict=True))
        return float(
            parts[member.front].embeddings
            + sum(sum(parts[name].blocks[start:stop]) for name, start, stop in member.segments)
            + sum(self.stitch_layer_params(j.front, j.back) for j in layers.values())  # type: ignore[arg-type]
            + parts[member.host].head
        )

    def _set_order(self) -> None:
        costs = np.asarray([self._cost(m) for m in self._members], dtype=np.float64)
        order = np.argsort(costs, kind="stable")
        self._ordered = [self._members[i] for i in order]
        self._costs = costs[order]
        self._index = {m: i for i, m in enumerate(self._ordered)}

    # ---- the space interface (sortednet.many.MemberSpace) ---------------------------------------
    @property
    def dims(self) -> tuple[str, ...]:
        return ("stitch",)

    @property
    def largest(self) -> Stitch:
        """The largest anchor (the teacher of in-place distillation); in an exported network, its member."""
        anchor = Stitch(self.anchors[-1].name)
        return anchor if anchor in self._index else self._ordered[-1]

    @property
    def smallest(self) -> Stitch:
        return self._ordered[0]

    def subnets(self) -> list[Stitch]:
        return list(self._ordered)

    def costs(self) -> np.ndarray:
        return self._costs.copy()

    def cost(self, member: Stitch | str) -> float:
        return float(self._costs[self._index[self.normalize(member)]])

    def normalize(self, member: Stitch | str) -> Stitch:
        stitch = Stitch.parse(member)
        if stitch not in self._index:
            names = ", ".join(a.name for a in self.anchors)
            example = next((str(m) for m in self._members if not m.is_anchor), names)
            raise ValueError(
                f"stitch {shown(str(member))} is not in the stitch space; allowed: an anchor ({names}) or one of its "
                f"{len(self) - len(self.anchors)} stitches such as {example}"
            )
        return stitch

    def __contains__(self, member: object) -> bool:
        try:
            self.normalize(member)  # type: ignore[arg-type]
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._ordered)

    def __iter__(self) -> Iterator[Stitch]:
        return iter(self.subnets())

    def sample(self, k: int, generator: np.random.Generator | int | None = None) -> list[Stitch]:
        rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
        return [self._ordered[i] for i in rng.integers(0, len(self), size=k)]

    def to_dict(self) -> dict[str, Any]:
        out = {
            "stitch": [[a.name, a.depth, a.width] for a in self.anchors],
            **{k: v for k, v in self.config.to_dict().items() if k != "ridge"},
        }
        # a checkpoint reads its members back, never re-enumerates them
        out["members"] = [str(m) for m in self._members]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StitchSpace:
        options = {k: v for k, v in data.items() if k not in ("stitch", "members")}
        return cls(data["stitch"], StitchConfig.from_dict(options), data.get("members"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StitchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"StitchSpace({', '.join(a.name for a in self.anchors)}: {len(self)} members, {self.config.mode})"
        )
