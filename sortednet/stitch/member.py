"""Stitch: one member of a stitched model, and how it is spelt.

Spelling (`str(stitch)`, accepted by `StitchedModel.use` and every CLI that names a member):
  `small`                          an anchor on its own (its name)
  `small:4>large:8`                anchor `small`'s blocks 0-3, a stitching layer, then anchor `large`'s blocks 8 to
                                   the end (its head included)
  `small:4>large:4-9>small:9`      a route of three segments (SN-Netv2's FSF / SFS): small's blocks 0-3, large's
                                   blocks 4-8, small's blocks 9 to the end, a stitching layer at each change
A leading `stitch=` is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..checks import shown

SPELLING = "an anchor name, FRONT:CUT>BACK:RESUME or FRONT:CUT>MID:START-STOP>BACK:RESUME"
EXAMPLE = "small:4>large:8"


@dataclass(frozen=True)
class AnchorInfo:
    name: str
    depth: int
    width: int


@dataclass(frozen=True)
class Stitch:
    """One member: `front` alone (cut is None); front's first `cut` blocks -> back's blocks from `resume`; or, with
    `last`, front's first `cut` blocks -> back's blocks resume..stop-1 -> last's blocks from `last_resume`."""

    front: str
    cut: int | None = None
    back: str | None = None
    resume: int | None = None
    stop: int | None = None
    last: str | None = None
    last_resume: int | None = None

    @property
    def is_anchor(self) -> bool:
        return self.cut is None

    @property
    def host(self) -> str:
        """The anchor whose head (and forward) runs."""
        return self.last or self.back or self.front

    @property
    def segments(self) -> tuple[tuple[str, int, int | None], ...]:
        """(anchor, first block, stop block or None: to the end) per segment, in the order they run."""
        if self.is_anchor:
            return ((self.front, 0, None),)
        if self.last is None:
            return ((self.front, 0, self.cut), (self.back, self.resume, None))  # type: ignore[return-value]
        return (
            (self.front, 0, self.cut),
            (self.back, self.resume, self.stop),
            (self.last, self.last_resume, None),
        )  # type: ignore[return-value]

    @property
    def joins(self) -> tuple[Stitch, ...]:
        """Each place a stitching layer runs, as a two-segment stitch (its front's hidden state after `cut` blocks
        becomes its back's input to block `resume`)."""
        if self.is_anchor:
            return ()
        first = Stitch(self.front, self.cut, self.back, self.resume)
        if self.last is None:
            return (first,)
        return (first, Stitch(self.back, self.stop, self.last, self.last_resume))  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str | Stitch) -> Stitch:
        if isinstance(text, Stitch):
            return text
        raw = str(text).strip()
        spec = raw.removeprefix("stitch=").strip()
        bad = ValueError(f"stitch {shown(raw)} is not {SPELLING}; example: {EXAMPLE}")
        parts = [p.strip() for p in spec.split(">")]
        if len(parts) == 1:
            if not spec or ":" in spec or "=" in spec:
                raise bad
            return cls(spec)
        try:
            front, cut = parts[0].rsplit(":", 1)
            if len(parts) == 2:
                back, resume = parts[1].rsplit(":", 1)
                return cls(front.strip(), int(cut), back.strip(), int(resume))
            if len(parts) == 3:
                mid, span = parts[1].rsplit(":", 1)
                start, stop = span.split("-")
                last, last_resume = parts[2].rsplit(":", 1)
                return cls(
                    front.strip(),
                    int(cut),
                    mid.strip(),
                    int(start),
                    int(stop),
                    last.strip(),
                    int(last_resume),
                )
        except ValueError:
            raise bad from None
        raise bad

    def __str__(self) -> str:
        if self.is_anchor:
            return self.front
        if self.last is None:
            return f"{self.front}:{self.cut}>{self.back}:{self.resume}"
        return f"{self.front}:{self.cut}>{self.back}:{self.resume}-{self.stop}>{self.last}:{self.last_resume}"
