"""StitchConfig: how anchors are stitched (which stitches exist, how the stitching layers learn)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..checks import number

MODES = ("fast_to_slow", "two_way", "snnet", "snnetv2")
SHARES = ("stitch", "position")


@dataclass(frozen=True)
class StitchConfig:
    """Which stitches exist (`mode`, sortednet.stitch.sets), per pair of anchors adjacent in size:

    - `snnet`: SN-Net's paired stitching (ziplab/SN-Net, stitching_deit): a window of `window` consecutive block
      positions slides by `stride`; each pair (j, k) of positions inside one window is the stitch front[: j + 1] ->
      back[k:]. Anchors of one depth; window=2, stride=1: 34 stitches per pair of 12-block anchors, 71 networks
      for DeiT-Ti/S/B, the paper's set.
    - `snnetv2`: SN-Netv2's two-way space (ziplab/SN-Netv2, classification/snnet.py): small -> large and
      large -> small stitches and the three-segment routes small -> large -> small (FSF) and large -> small ->
      large (SFS); 134 networks for two 12-block anchors. `window`/`stride` are not used.
    - `fast_to_slow`: the front anchor cut after every `stride`-th block c, the back anchor resuming at r with
      |r - m| < window, m = round(c x back depth / front depth) (any depths); `two_way`: large -> small as well.

    share: `position` (SN-Net's default) shares one stitching layer among the stitches of one window position
    (snnet) or of one cut (the other modes), initialised to the mean of their least-squares solutions; `stitch`
    gives every (front, cut, back, resume) its own. null: the mode's own (`position` for snnet, else `stitch`).

    lora_rank: 0 trains the stitching layers' dense weights (SN-Net); r > 0 freezes the least-squares weight and
    trains a rank-r update scaled by lora_alpha / r (SN-Netv2: r=64, alpha 1); the bias stays trainable.

    ridge: relative Tikhonov term of the least-squares fit (x the mean diagonal of X^T X), for rank-deficient
    calibration activations."""

    mode: str = "fast_to_slow"
    window: int = 2
    stride: int = 1
    share: str | None = None
    lora_rank: int = 0
    lora_alpha: float = 1.0
    ridge: float = 1e-4

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"stitch.mode={self.mode!r} is unknown; allowed: {', '.join(MODES)}")
        number("stitch.window", self.window, int, low=1)
        number("stitch.stride", self.stride, int, low=1)
        number("stitch.lora_rank", self.lora_rank, int, low=0)
        object.__setattr__(
            self, "lora_alpha", number("stitch.lora_alpha", self.lora_alpha, low=0, low_open=True)
        )
        number("stitch.ridge", self.ridge, float, low=0)
        share = self.share if self.share is not None else ("position" if self.mode == "snnet" else "stitch")
        if share not in SHARES:
            raise ValueError(f"stitch.share={self.share!r} is unknown; allowed: {', '.join(SHARES)} or null")
        object.__setattr__(self, "share", share)

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StitchConfig:
        """A config read from a file; files written before `lora_alpha` existed scaled the update by 1."""
        data = dict(data)
        if "lora_alpha" not in data and data.get("lora_rank"):
            data["lora_alpha"] = float(data["lora_rank"])
        return cls(**data)
