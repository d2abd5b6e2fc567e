"""StageFamily: the declarative description of a stage-based vision architecture (ResNet, ConvNeXt, Swin).

Such a model is a stem, then stages of blocks; a stage's blocks share one width (`hidden_sizes[i]`) and
the first (or last) block of a stage changes width and resolution. Three dimensions nest:

- `channels`: every width of the model shrinks by one ratio. An int c is the width of the last stage; a
  fraction f means c = round(f x last width). Every other width w (each stage, the stem) becomes
  round(w x c / last width). Widths inside a block (a bottleneck's reduction, a depthwise conv) follow from
  the block's own width as the architecture derives them, so they are read from the smaller model itself.
- `depth`: the first k blocks of every stage (a stage with fewer keeps all of them); an int is k, a fraction
  of the deepest stage's block count. The first block of a stage (the one that downsamples) always runs.
- `ffn`: for families whose config gives the FFN as a multiple of the block width (Swin's `mlp_ratio`,
  named by `ffn_ratio`), that multiple shrinks: an int is the last stage's FFN width, a fraction of it.

Every tensor of a sub-model is a prefix of the nested tensor along each axis (a depthwise conv keeps
groups == channels), so the slicing plan is a prefix and the smaller config says everything else.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..spec import Value
from .base import check_dim, from_fields

KIND = "stages"  # the family's `kind` in the checkpoint header; a Family has none
STAGE_DIMS = ("channels", "depth", "ffn")
DIM_NAMES = {
    "channels": "channels of the last stage",
    "depth": "blocks per stage",
    "ffn": "FFN channels of the last stage",
}


@dataclass(frozen=True)
class StageFamily:
    """Declarative data only (JSON in the one-file checkpoint header)."""

    name: str
    model_types: tuple[str, ...]
    stages: str  # path of the stage ModuleList inside model.base_model
    blocks: str  # attribute of a stage holding its block list
    widths: tuple[str, ...]  # config keys that `channels` scales: an int or a list of ints per stage
    depths: str = "depths"  # config key of the per-stage block counts
    ffn_ratio: str = ""  # config key of the FFN width as a multiple of the block width (for `ffn`)
    # 1-D parameters of a block that multiply its output channel-wise (ConvNeXt's layer scale)
    block_scales: tuple[str, ...] = ()
    dims: tuple[str, ...] = ("channels", "depth")
    unsupported: Mapping[str, str] = field(default_factory=dict)
    verified: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("model_types", "widths", "block_scales", "dims"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "unsupported", dict(self.unsupported))
        where = f"family {self.name!r}"
        if not self.name or not self.model_types or not self.stages or not self.blocks or not self.widths:
            raise ValueError(f"{where}: name, model_types, stages, blocks and widths must be non-empty")
        bad = [d for d in self.dims if d not in STAGE_DIMS]
        if bad:
            raise ValueError(f"{where}: dimension {bad[0]!r} is not known; allowed: {', '.join(STAGE_DIMS)}")
        if "ffn" in self.dims and not self.ffn_ratio:
            raise ValueError(
                f"{where}: nesting ffn needs ffn_ratio, the config key of the FFN's width multiple"
            )

    # ---- the checkpoint header ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "name": self.name,
            "model_types": list(self.model_types),
            "stages": self.stages,
            "blocks": self.blocks,
            "widths": list(self.widths),
            "depths": self.depths,
            "ffn_ratio": self.ffn_ratio,
            "block_scales": list(self.block_scales),
            "dims": list(self.dims),
            "unsupported": dict(self.unsupported),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageFamily:
        return from_fields(cls, {k: v for k, v in data.items() if k != "kind"})

    # ---- sizes --------------------------------------------------------------------------------
    def stage_widths(self, config: Any) -> dict[str, int | list[int]]:
        return {key: copy.copy(getattr(config, key)) for key in self.widths}

    def full_sizes(self, config: Any) -> dict[str, int]:
        """`channels`: the last stage's width; `depth`: the deepest stage's block count; `ffn`: the last
        stage's FFN width (with `ffn_ratio`); `min_width`: the narrowest width the config holds (what a
        channels value must keep at one channel or more)."""
        widths = self.stage_widths(config)
        flat = [w for v in widths.values() for w in (v if isinstance(v, list) else [v])]
        depths = list(getattr(config, self.depths))
        full = {"channels": int(flat_last(widths)), "depth": max(depths), "min_width": min(flat)}
        if self.ffn_ratio:
            full["ffn"] = int(getattr(config, self.ffn_ratio) * last_stage_width(config, widths))
        return full

    def check_dim(self, dim: str) -> None:
        check_dim(self, dim)

    def resolve(self, full: Mapping[str, int], dim: str, value: Value) -> int:
        """Absolute size for one space value, validated against the model (one-line ValueError)."""
        self.check_dim(dim)
        total, what = full[dim], DIM_NAMES[dim]
        size = round(value * total) if isinstance(value, float) else int(value)
        if size > total:
            raise ValueError(
                f"{dim}={value} exceeds the model's {total} {what}; allowed: 1..{total} or a fraction in (0, 1]"
            )
        if dim == "channels":
            narrowest = scale(full["min_width"], size, total)
            if narrowest < 1:
                least = next(c for c in range(1, total + 1) if scale(full["min_width"], c, total) >= 1)
                raise ValueError(
                    f"channels={value} leaves the model's narrowest width ({full['min_width']} of the last "
                    f"stage's {total}) with 0 channels; allowed: a fraction >= {least / total:.3g} or an int "
                    f"{least}..{total}"
                )
        elif size < 1:
            raise ValueError(
                f"{dim}={value} of {total} {what} rounds to 0; allowed: a fraction >= {1 / total:.3g}"
            )
        return size

    # ---- export -------------------------------------------------------------------------------
    def check_export(self, full: Mapping[str, int], sizes: Mapping[str, int], class_name: str) -> None:
        """Every subnet of a stage family is a plain model of its class."""

    def sub_config(
        self, config: Any, full: Mapping[str, int], sizes: Mapping[str, int], kept: Any = None
    ) -> Any:
        """A copy of the config with every width scaled and each stage's blocks cut to `depth` (its first blocks:
        a stage family has no other depth order, so `kept` is the prefix)."""
        new = copy.deepcopy(config)
        channels = sizes.get("channels", full["channels"])
        for key, value in self.stage_widths(config).items():
            scaled = (
                [scale(w, channels, full["channels"]) for w in value] if isinstance(value, list) else None
            )
            setattr(new, key, scaled if scaled is not None else scale(value, channels, full["channels"]))
        depth = sizes.get("depth", full["depth"])
        setattr(new, self.depths, [min(depth, d) for d in getattr(config, self.depths)])
        if self.ffn_ratio and sizes.get("ffn", full["ffn"]) != full["ffn"]:
            setattr(new, self.ffn_ratio, getattr(config, self.ffn_ratio) * sizes["ffn"] / full["ffn"])
        return new

    def slices(
        self, key: str, target_shape: tuple[int, ...], full: Mapping[str, int], sizes: Mapping[str, int]
    ) -> tuple[list[tuple[slice, ...]], int]:
        """Every tensor of a sub-model is a prefix along each axis (channels and blocks are prefixes)."""
        return [tuple(slice(0, n) for n in target_shape)], 0


def scale(width: int, channels: int, full_channels: int) -> int:
    """A width under `channels` (of the last stage's `full_channels`): round(width x channels / full), half up."""
    return (2 * width * channels + full_channels) // (2 * full_channels)


def flat_last(widths: Mapping[str, int | list[int]]) -> int:
    """The last stage's width: the last entry of the first list-valued key (hidden_sizes)."""
    for value in widths.values():
        if isinstance(value, list):
            return value[-1]
    return next(iter(widths.values()))  # type: ignore[return-value]


def last_stage_width(config: Any, widths: Mapping[str, int | list[int]]) -> int:
    """The last stage's width: `config.hidden_size` where the config derives it (Swin: embed_dim x 2^(stages-1))."""
    return int(getattr(config, "hidden_size", 0) or flat_last(widths))


RESNET = StageFamily(
    name="resnet",
    model_types=("resnet",),
    stages="encoder.stages",
    blocks="layers",
    widths=("embedding_size", "hidden_sizes"),
    verified=True,  # check_stage_family passes in tests/test_cnn_families.py (basic and bottleneck blocks)
    unsupported={
        "hidden": "a convolutional network has no single residual width; use channels",
        "heads": "no attention",
        "ffn": "no FFN; a bottleneck's width follows its block's channels",
        "rank": "convolutions are not factorised",
    },
)

CONVNEXT = StageFamily(
    name="convnext",
    model_types=("convnext",),
    stages="encoder.stages",
    blocks="layers",
    widths=("hidden_sizes",),
    block_scales=("layer_scale_parameter",),
    verified=True,  # check_stage_family passes in tests/test_cnn_families.py
    unsupported={
        "hidden": "a convolutional network has no single residual width; use channels",
        "heads": "no attention",
        "ffn": (
            "transformers' ConvNextLayer hard-codes its inverted bottleneck as 4 x channels, so no plain "
            "ConvNext config holds a smaller FFN; nest channels (the FFN follows at 4x)"
        ),
        "rank": "convolutions are not factorised",
    },
)

SWIN = StageFamily(
    name="swin",
    model_types=("swin", "swinv2"),
    stages="encoder.layers",
    blocks="blocks",
    widths=("embed_dim",),
    ffn_ratio="mlp_ratio",
    dims=("depth", "ffn"),
    verified=True,  # check_stage_family passes for both in tests/test_family_check.py (shifted windows included)
    unsupported={
        "channels": (
            "a Swin config fixes each stage's head count, so a narrower stage has smaller heads, and a prefix "
            "of q/k/v is not a smaller Swin's; nest depth or ffn"
        ),
        "hidden": "a Swin's width changes from stage to stage; nest depth or ffn",
        "heads": "a Swin config ties heads to width (head size = width / heads); nest depth or ffn",
        "rank": "Swin's projections are not factorised",
    },
)
