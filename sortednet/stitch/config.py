"""StitchConfig: how anchors are stitched (which stitches exist, how the stitching layers learn)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..checks import number

MODES = ("fast_to_slow", "two_way")


@dataclass(frozen=True)
class StitchConfig:
    """mode: `fast_to_slow` (SN-Net: a smaller anchor's first blocks, then a larger one's last blocks, between
    anchors adjacent in size) or `two_way` (SN-Netv2: large -> small as well).

    window, stride: SN-Net's sliding window over block positions. The front anchor is cut after every
    `stride`-th block c (1 <= c <= its depth); the back anchor resumes at block r with |r - m| < window, where
    m = round(c x back depth / front depth) is the matching position (1 <= r <= back depth; r = depth: only its
    final norm and head). window=2, stride=1 is SN-Net's default for DeiT: 34 stitches per pair of 12-block
    anchors, 71 networks for DeiT-Ti/S/B with the anchors, as in its paper.

    lora_rank: 0 trains the stitching layers' dense weights (SN-Net); r > 0 freezes the least-squares weight
    and trains a rank-r update on it (SN-Netv2), the bias stays trainable.

    ridge: relative Tikhonov term of the least-squares fit (x the mean diagonal of X^T X), for rank-deficient
    calibration activations."""

    mode: str = "fast_to_slow"
    window: int = 2
    stride: int = 1
    lora_rank: int = 0
    ridge: float = 1e-4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"stitch.mode={self.mode!r} is unknown; allowed: {', '.join(MODES)}")
        number("stitch.window", self.window, int, low=1)
        number("stitch.stride", self.stride, int, low=1)
        number("stitch.lora_rank", self.lora_rank, int, low=0)
        number("stitch.ridge", self.ridge, float, low=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
