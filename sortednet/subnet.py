"""Subnet: one sub-model, spelt `depth=4,ffn=0.5,heads=6` (uniform) or with sizes per layer and kept layers,
`ffn=[0.5,0.5,1.0,0.25],layers=0-2+5` (Mix'n'Match, Gemma 3n's slicing configs).

A value is a fraction of the full size (a float in (0, 1]) or an absolute size (an int >= 1). A per-layer value
is a list with one size per layer the sub-model runs (its kept layers, in their original order). `layers` names
the kept layers of the full model (ranges joined by '+'); without it, `depth=k` keeps the first k of the space's
depth order. `str()` gives the canonical spelling and `Subnet.parse(str(s)) == s`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from .checks import shown

DIMENSIONS = ("depth", "hidden", "heads", "ffn", "rank", "channels")
LAYERS = "layers"  # the kept layers of a per-layer subnet
PER_LAYER = (
    "heads",
    "ffn",
    "rank",
)  # dimensions that may take a size per layer (a space says which it allows)
Value = int | float
Size = Value | tuple[Value, ...]


def check_value(dim: str, value: object) -> Value:
    if dim not in DIMENSIONS:
        raise ValueError(f"unknown dimension {shown(dim)}; allowed: {', '.join(DIMENSIONS)}, layers")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"{dim}={shown(value)} is not a number; allowed: an int >= 1 or a fraction in (0, 1]"
        )
    if isinstance(value, (float, np.floating)):
        if not 0.0 < float(value) <= 1.0 or math.isnan(value):
            raise ValueError(
                f"{dim}={value!r} is outside (0, 1]; allowed: a fraction in (0, 1] or an int >= 1"
            )
        return float(value)
    if int(value) < 1:
        raise ValueError(f"{dim}={value!r} is below 1; allowed: an int >= 1 or a fraction in (0, 1]")
    return int(value)


def format_value(value: Value) -> str:
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def parse_value(dim: str, text: str) -> Value:
    if dim not in DIMENSIONS:
        raise ValueError(f"unknown dimension {shown(dim)}; allowed: {', '.join(DIMENSIONS)}, layers")
    text = text.strip()
    try:
        value: Value = int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise ValueError(
            f"{dim}={shown(text)} is not a number; allowed: an int >= 1 or a fraction in (0, 1]"
        ) from None
    return check_value(dim, value)


def check_size(dim: str, value: object) -> Size:
    """A scalar size, or a per-layer list of sizes of one kind (all fractions or all absolute)."""
    if isinstance(value, (list, tuple)):
        if dim not in PER_LAYER:
            raise ValueError(
                f"{dim}={shown(list(value))} gives a size per layer; allowed per layer: {', '.join(PER_LAYER)}"
            )
        if not value:
            raise ValueError(f"{dim}=[] is empty; give one size per kept layer")
        sizes = tuple(check_value(dim, v) for v in value)
        if len({type(v) for v in sizes}) > 1:
            raise ValueError(f"{dim}={shown(list(value))} mixes fractions and absolute sizes; give one kind")
        return sizes
    return check_value(dim, value)


def check_layers(value: object) -> tuple[int, ...]:
    layers = list(value) if isinstance(value, (list, tuple, range)) else None
    if not layers or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in layers):
        raise ValueError(f"layers={shown(value)} is not a list of layer indices; example: layers=0-2+5")
    if min(layers) < 0 or len(set(layers)) != len(layers):
        raise ValueError(f"layers={shown(value)}: each layer index >= 0 once; example: layers=0-2+5")
    return tuple(sorted(int(i) for i in layers))


def format_layers(layers: Sequence[int]) -> str:
    """0-2+5: runs of consecutive layers as first-last, joined by '+'."""
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return "+".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def parse_layers(text: str) -> tuple[int, ...]:
    layers: list[int] = []
    for part in filter(None, (p.strip() for p in text.split("+"))):
        first, sep, last = part.partition("-")
        if not first.isdigit() or (sep and not last.isdigit()):
            raise ValueError(f"layers={shown(text)} is not layer ranges; example: layers=0-2+5")
        layers.extend(range(int(first), int(last) + 1) if sep else [int(first)])
    return check_layers(layers)


def _parts(text: str) -> list[str]:
    """Split on the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


class Subnet:
    """One point of a nesting space: a size for some dimensions (the others at full size), a dimension of
    `PER_LAYER` possibly a size per kept layer, and possibly the kept layers (`layers`)."""

    __slots__ = ("_sizes", "_layers", "_hash")

    def __init__(
        self,
        sizes: Mapping[str, Size | Iterable[Value]] | None = None,
        *,
        layers: Iterable[int] | None = None,
        **kwargs: Size | Iterable[Value],
    ) -> None:
        merged = {**(sizes or {}), **kwargs}
        if LAYERS in merged:
            layers = merged.pop(LAYERS)  # type: ignore[assignment]
        checked = {d: check_size(d, v) for d, v in merged.items()}
        self._layers = None if layers is None else check_layers(layers)
        if self._layers is not None and "depth" in checked:
            raise ValueError("a subnet gives depth or layers, not both: depth is the number of kept layers")
        self._sizes = tuple((d, checked[d]) for d in DIMENSIONS if d in checked)
        n = len(self._layers) if self._layers is not None else None
        for d, v in self._sizes:
            if isinstance(v, tuple) and n is not None and len(v) != n:
                raise ValueError(f"{d} gives {len(v)} sizes for {n} kept layers; give one per kept layer")
        self._hash = hash((self._sizes, self._layers))

    @classmethod
    def parse(cls, text: str | Subnet) -> Subnet:
        """`Subnet.parse("depth=8,ffn=0.5,heads=6")`, `Subnet.parse("ffn=[0.5,1.0],layers=0+3")`; `str(subnet)`
        gives the same text back."""
        if isinstance(text, Subnet):
            return text
        sizes: dict[str, Size] = {}
        layers = None
        for part in _parts(str(text)):
            dim, sep, raw = part.partition("=")
            dim, raw = dim.strip(), raw.strip()
            if not sep:
                raise ValueError(
                    f"subnet part {shown(part)} is not dim=value; example: depth=8,ffn=0.5,heads=6"
                )
            if dim in sizes or (dim == LAYERS and layers is not None):
                raise ValueError(
                    f"subnet {shown(str(text))} gives {shown(dim)} twice; give each dimension once"
                )
            if dim == LAYERS:
                layers = parse_layers(raw)
            elif raw.startswith("[") and raw.endswith("]"):
                sizes[dim] = check_size(dim, [parse_value(dim, v) for v in raw[1:-1].split(",")])
            else:
                sizes[dim] = parse_value(dim, raw)
        return cls(sizes, layers=layers)

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self._sizes)

    @property
    def layers(self) -> tuple[int, ...] | None:
        """The kept layers, or None: the space's depth order decides (`depth`)."""
        return self._layers

    @property
    def per_layer(self) -> bool:
        """Whether it gives kept layers or a size per layer (not a point of the uniform grid)."""
        return self._layers is not None or any(isinstance(v, tuple) for _, v in self._sizes)

    def get(self, dim: str, default: Size | None = None) -> Size | None:
        return dict(self._sizes).get(dim, default)

    def __getitem__(self, dim: str) -> Size:
        return dict(self._sizes)[dim]

    def items(self) -> tuple[tuple[str, Size], ...]:
        return self._sizes

    def as_dict(self) -> dict[str, Size | tuple[int, ...]]:
        out: dict[str, Size | tuple[int, ...]] = dict(self._sizes)
        if self._layers is not None:
            out[LAYERS] = self._layers
        return out

    def __str__(self) -> str:
        parts = [
            f"{d}=[{','.join(map(format_value, v))}]" if isinstance(v, tuple) else f"{d}={format_value(v)}"
            for d, v in self._sizes
        ]
        if self._layers is not None:
            parts.append(f"{LAYERS}={format_layers(self._layers)}")
        return ",".join(parts)

    def __repr__(self) -> str:
        return f"Subnet({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Subnet) and (self._sizes, self._layers) == (other._sizes, other._layers)

    def __hash__(self) -> int:
        return self._hash
