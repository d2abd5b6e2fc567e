"""Train-time augmentation of image batches (`data.augment`), on the batch and on the device, after Lightning moved
it there: what DeiT's recipe (SN-Net) and DeiT III's (SN-Netv2) do per image in their loaders, here per image in
one batched pass. Every random draw is a function of (seed, optimizer step, micro-batch, rank): a resumed run
augments as the uninterrupted one; validation batches are never augmented.

Order, as timm's: repeats, random resized crop or padded crop, flip, ThreeAugment, colour jitter, RandAugment
(values in [0, 1]), normalisation back, random erasing (on the normalised image, noise-filled), then mixup / cutmix
with label smoothing (the labels become class probabilities, which the task's loss takes as they are).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..checks import number
from .image_ops import affine, color_jitter, rand_augment, three_augment

Tensor = torch.Tensor


@dataclass(frozen=True)
class Augment:
    """`data.augment.*` (null: no augmentation). DeiT: crop 0.08, flip 0.5, randaugment [2, 9], erasing 0.25,
    mixup 0.8, cutmix 1.0, smoothing 0.1, repeats 3."""

    crop: float | None = None  # random resized crop: area in [crop, 1] of the image, aspect in [3/4, 4/3]
    pad_crop: int = 0  # DeiT III's simple random crop: shifted by up to this many pixels, borders reflected
    flip: float = 0.0  # probability of a horizontal flip
    three_augment: bool = False  # DeiT III: one of grayscale, solarize, Gaussian blur per image
    color_jitter: float = 0.0  # brightness, contrast, saturation factors in [1 - s, 1 + s]
    randaugment: Sequence[float] | None = None  # [N ops, magnitude M of 10]: timm's rand-mM-nN-mstd0.5-inc1
    randaugment_std: float = 0.5
    erasing: float = 0.0  # probability of a random erasing per image
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0: off
    mix_prob: float = 1.0  # probability that a batch is mixed
    switch_prob: float = 0.5  # with both on: probability of cutmix rather than mixup
    smoothing: float = 0.0  # label smoothing
    repeats: int = 1  # repeated augmentation: each loaded image appears this many times, augmented apart

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.crop is not None:
            set_(self, "crop", number("data.augment.crop", self.crop, low=0, high=1, low_open=True))
        set_(self, "pad_crop", number("data.augment.pad_crop", self.pad_crop, int, low=0))
        for key in ("flip", "erasing", "mix_prob", "switch_prob"):
            set_(self, key, number(f"data.augment.{key}", getattr(self, key), low=0, high=1))
        set_(
            self, "smoothing", number("data.augment.smoothing", self.smoothing, low=0, high=1, high_open=True)
        )
        for key in ("color_jitter", "mixup", "cutmix", "randaugment_std"):
            set_(self, key, number(f"data.augment.{key}", getattr(self, key), low=0))
        set_(self, "repeats", number("data.augment.repeats", self.repeats, int, low=1))
        if not isinstance(self.three_augment, bool):
            raise ValueError(
                f"data.augment.three_augment={self.three_augment!r} is not allowed; allowed: true or false"
            )
        if self.crop is not None and self.pad_crop:
            raise ValueError(
                f"data.augment.crop={self.crop} with data.augment.pad_crop={self.pad_crop}; allowed: one crop"
            )
        ra = self.randaugment
        if ra is not None:
            if isinstance(ra, str) or not isinstance(ra, Sequence) or len(ra) != 2:
                raise ValueError(
                    f"data.augment.randaugment={ra!r}; allowed: [N ops, magnitude of 10] or null"
                )
            set_(
                self,
                "randaugment",
                (
                    number("data.augment.randaugment[0]", ra[0], int, low=1),
                    number("data.augment.randaugment[1]", ra[1], low=0, high=10),
                ),
            )

    @classmethod
    def make(cls, value: Augment | Mapping[str, Any] | None) -> Augment | None:
        if value is None or isinstance(value, Augment):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"data.augment={value!r}; allowed: a mapping of augmentation options, or null")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"data.augment.{unknown[0]} is unknown; allowed: {', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**value)

    @property
    def soft_labels(self) -> bool:
        return bool(self.mixup or self.cutmix or self.smoothing)

    def __call__(
        self,
        batch: Mapping[str, Tensor],
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
    ) -> dict[str, Tensor]:
        """The augmented batch (`seed`: a function of the run's seed, the step, the micro-batch and the rank)."""
        x, y = batch["pixel_values"], batch["labels"]
        if self.repeats > 1:
            x, y = x.repeat_interleave(self.repeats, 0), y.repeat_interleave(self.repeats, 0)
        g = torch.Generator(device=x.device).manual_seed(seed)
        shape = (1, -1, 1, 1)
        mu = torch.tensor(mean, dtype=x.dtype, device=x.device).view(shape)
        sigma = torch.tensor(std, dtype=x.dtype, device=x.device).view(shape)
        u = (x * sigma + mu).clamp(0, 1)
        if self.crop is not None:
            u = resized_crop(u, self.crop, g)
        if self.pad_crop:
            u = shifted(u, self.pad_crop, g)
        if self.flip:
            flip = torch.rand(len(u), generator=g, device=u.device) < self.flip
            u = torch.where(flip.view(-1, 1, 1, 1), u.flip(-1), u)
        if self.three_augment:
            u = three_augment(u, g)
        if self.color_jitter:
            u = color_jitter(u, self.color_jitter, g)
        if self.randaugment is not None:
            n, m = self.randaugment
            u = rand_augment(u, int(n), float(m), self.randaugment_std, g)
        x = (u.clamp(0, 1) - mu) / sigma
        if self.erasing:
            x = erase(x, self.erasing, g)
        out = {**batch, "pixel_values": x, "labels": y}
        if self.soft_labels:
            out["pixel_values"], out["labels"] = self._mix(x, y, num_classes, np.random.default_rng(seed))
        return out

    def _mix(self, x: Tensor, y: Tensor, num_classes: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """timm's Mixup in batch mode: each image mixed with the batch reversed; targets smoothed, then mixed."""
        off = self.smoothing / num_classes
        target = F.one_hot(y, num_classes).to(x.dtype) * (1 - self.smoothing) + off
        use = (self.mixup or self.cutmix) and rng.random() < self.mix_prob
        if not use:
            return x, target
        cut = self.cutmix > 0 and (self.mixup == 0 or rng.random() < self.switch_prob)
        lam = float(rng.beta(self.cutmix, self.cutmix) if cut else rng.beta(self.mixup, self.mixup))
        if cut:
            h, w = x.shape[-2:]
            ratio = math.sqrt(1 - lam)
            ch, cw = int(h * ratio), int(w * ratio)
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
        else:
            x = lam * x + (1 - lam) * x.flip(0)
        return x, lam * target + (1 - lam) * target.flip(0)


def resized_crop(u: Tensor, low: float, g: torch.Generator) -> Tensor:
    """A random resized crop per image, resampled to the image's size: area fraction in [low, 1], log aspect
    ratio uniform in [log 3/4, log 4/3], the box inside the image (sides cut to the image when too long)."""
    n, dev = len(u), u.device
    area = low + (1 - low) * torch.rand(n, generator=g, device=dev)
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(n, generator=g, device=dev))
    width, height = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    cx = (1 - width) * (2 * torch.rand(n, generator=g, device=dev) - 1)
    cy = (1 - height) * (2 * torch.rand(n, generator=g, device=dev) - 1)
    zero = torch.zeros_like(width)
    matrix = torch.stack([torch.stack([width, zero, cx], 1), torch.stack([zero, height, cy], 1)], 1)
    return affine(u, matrix)


def shifted(u: Tensor, pad: int, g: torch.Generator) -> Tensor:
    """Each image shifted by whole pixels in [-pad, pad] per axis, the borders reflected (a random crop of the
    reflect-padded image)."""
    n, (h, w) = len(u), u.shape[-2:]
    padded = F.pad(u, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=u.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g, device=u.device)
    rows = (
        (dy.view(n, 1) + torch.arange(h, device=u.device))
        .view(n, 1, h, 1)
        .expand(n, u.shape[1], h, w + 2 * pad)
    )
    padded = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=u.device)).view(n, 1, 1, w).expand(n, u.shape[1], h, w)
    return padded.gather(3, cols)


def erase(x: Tensor, prob: float, g: torch.Generator, attempts: int = 10) -> Tensor:
    """timm's RandomErasing (mode pixel) per image: with probability `prob`, a box of area [0.02, 1/3] of the image
    and aspect ratio in [0.3, 1/0.3] (log-uniform), the first of `attempts` draws that fits, filled with N(0, 1)."""
    n, (h, w), dev = len(x), x.shape[-2:], x.device
    area = (0.02 + (1 / 3 - 0.02) * torch.rand(n, attempts, generator=g, device=dev)) * h * w
    ratio = torch.exp(
        math.log(0.3) + 2 * math.log(1 / 0.3) * torch.rand(n, attempts, generator=g, device=dev)
    )
    bh, bw = (area * ratio).sqrt().round().long(), (area / ratio).sqrt().round().long()
    fits = (bh < h) & (bw < w) & (bh > 0) & (bw > 0)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.zeros(n, dtype=torch.long, device=dev))
    bh, bw = bh.gather(1, first[:, None]).squeeze(1), bw.gather(1, first[:, None]).squeeze(1)
    on = (torch.rand(n, generator=g, device=dev) < prob) & fits.any(1)
    top = (torch.rand(n, generator=g, device=dev) * (h - bh + 1).clamp_min(1)).long()
    left = (torch.rand(n, generator=g, device=dev) * (w - bw + 1).clamp_min(1)).long()
    rows, cols = torch.arange(h, device=dev).view(1, h, 1), torch.arange(w, device=dev).view(1, 1, w)
    box = (rows >= top.view(n, 1, 1)) & (rows < (top + bh).view(n, 1, 1))
    box = box & (cols >= left.view(n, 1, 1)) & (cols < (left + bw).view(n, 1, 1)) & on.view(n, 1, 1)
    noise = torch.randn(x.shape, generator=g, device=dev, dtype=x.dtype)
    return torch.where(box[:, None], noise, x)


def augment_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """The augmentation seed of one micro-batch on one rank."""
    return int(np.random.SeedSequence([seed, step, micro, rank]).generate_state(1)[0])
