"""Stitch and StitchSpace: which stitched networks exist, how they are spelt, and their order by cost.

Spelling (`str(stitch)`, accepted by `StitchedModel.use` and every CLI that names a member):
  `small`               an anchor on its own (its name)
  `small:4>large:8`     anchor `small`'s blocks 0-3, a stitching layer, then anchor `large`'s blocks 8 to the end
                        (its head included); a leading `stitch=` is accepted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checks import shown
from .anchors import AnchorParts
from .config import StitchConfig


@dataclass(frozen=True)
class Stitch:
    """One member: `front` alone (cut is None), or front's first `cut` blocks -> back's blocks from `resume`."""

    front: str
    cut: int | None = None
    back: str | None = None
    resume: int | None = None

    @property
    def is_anchor(self) -> bool:
        return self.cut is None

    @property
    def host(self) -> str:
        """The anchor whose head (and forward) runs."""
        return self.front if self.back is None else self.back

    @classmethod
    def parse(cls, text: str | Stitch) -> Stitch:
        if isinstance(text, Stitch):
            return text
        raw = str(text).strip()
        spec = raw.removeprefix("stitch=").strip()
        if ">" not in spec:
            if not spec or ":" in spec or "=" in spec:
                raise ValueError(
                    f"stitch {shown(raw)} is not an anchor name or FRONT:CUT>BACK:RESUME; example: small:4>large:8"
                )
            return cls(spec)
        try:
            left, right = spec.split(">")
            front, cut = left.split(":")
            back, resume = right.split(":")
            return cls(front.strip(), int(cut), back.strip(), int(resume))
        except ValueError:
            raise ValueError(
                f"stitch {shown(raw)} is not an anchor name or FRONT:CUT>BACK:RESUME; example: small:4>large:8"
            ) from None

    def __str__(self) -> str:
        return self.front if self.is_anchor else f"{self.front}:{self.cut}>{self.back}:{self.resume}"


@dataclass(frozen=True)
class AnchorInfo:
    name: str
    depth: int
    width: int


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
        if members is None:  # given: a checkpoint's own list, or an exported network's one member
            members = [Stitch(a.name) for a in self.anchors]
            for front, back in self.pairs():
                members += self._stitches(front, back)
        self._members = [Stitch.parse(m) for m in members]
        self._set_order()

    def pairs(self) -> list[tuple[AnchorInfo, AnchorInfo]]:
        adjacent = list(zip(self.anchors[:-1], self.anchors[1:], strict=True))
        if self.config.mode == "two_way":
            return adjacent + [(b, a) for a, b in adjacent]
        return adjacent

    def _stitches(self, front: AnchorInfo, back: AnchorInfo) -> list[Stitch]:
        out = []
        window = self.config.window
        for cut in range(1, front.depth + 1, self.config.stride):
            match = round(cut * back.depth / front.depth)
            for resume in range(match - window + 1, match + window):
                if 1 <= resume <= back.depth:
                    out.append(Stitch(front.name, cut, back.name, resume))
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
        parts = self._parts
        if parts is None:  # proxy: 12 d^2 per block, the stitching layer d_in x d_out
            w = {a.name: a.width for a in self.anchors}
            if member.is_anchor:
                return 12.0 * w[member.front] ** 2 * self._by_name[member.front].depth
            back_blocks = self._by_name[member.back].depth - member.resume  # type: ignore[index]
            return 12.0 * (w[member.front] ** 2 * member.cut + w[member.back] ** 2 * back_blocks) + (  # type: ignore[operator]
                w[member.front] * w[member.back]  # type: ignore[index]
            )
        if member.is_anchor:
            return float(parts[member.front].total)
        front, back = parts[member.front], parts[member.back]  # type: ignore[index]
        return float(
            front.embeddings
            + sum(front.blocks[: member.cut])
            + self.stitch_layer_params(member.front, member.back)  # type: ignore[arg-type]
            + sum(back.blocks[member.resume :])
            + back.head
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
        return cls(data["stitch"], StitchConfig(**options), data.get("members"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StitchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"StitchSpace({', '.join(a.name for a in self.anchors)}: {len(self)} members, {self.config.mode})"
        )
