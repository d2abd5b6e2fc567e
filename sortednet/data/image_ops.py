"""Per-image photometric and geometric operations on a batch [B, C, H, W] of values in [0, 1], each image with its own
parameters (tensors of B values), for the train-time augmentation of sortednet.data.augment: RandAugment as timm's
`rand-mM-nN-mstd0.5-inc1` (DeiT), DeiT III's ThreeAugment and colour jitter. Random draws come from the
generator given, never from torch's global RNG."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
FILL = 0.5  # the value affine operations bring in from outside the image (timm: the mean colour)


def gray(x: Tensor) -> Tensor:
    """Luma [B, 1, H, W] (ITU-R 601-2, as PIL's convert('L')); a one-channel image is its own."""
    if x.shape[1] != 3:
        return x.mean(dim=1, keepdim=True)
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """b + factor (a - b) per image, clipped (PIL's ImageEnhance)."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, 1)


def affine(x: Tensor, matrix: Tensor) -> Tensor:
    """Each image resampled by its 2x3 matrix in normalised coordinates (output -> input), FILL outside."""
    grid = F.affine_grid(matrix.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - FILL, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + FILL


def _identity(n: int, like: Tensor) -> Tensor:
    return torch.eye(2, 3, dtype=like.dtype, device=like.device).repeat(n, 1, 1)


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    a = degrees * math.pi / 180
    m = _identity(len(x), x)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    return affine(x, m)


def shear(x: Tensor, factor: Tensor, axis: int) -> Tensor:
    m = _identity(len(x), x)
    m[:, axis, 1 - axis] = factor
    return affine(x, m)


def translate(x: Tensor, fraction: Tensor, axis: int) -> Tensor:
    m = _identity(len(x), x)
    m[:, axis, 2] = 2 * fraction  # normalised coordinates span 2
    return affine(x, m)


def autocontrast(x: Tensor) -> Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    return torch.where(high > low, (x - low) * scale, x)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per image and channel on 256 levels (PIL's ImageOps.equalize)."""
    b, c, h, w = x.shape
    levels = (x * 255).round().long().clamp(0, 255).reshape(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float)
    )
    last = hist.gather(1, levels.max(dim=1, keepdim=True).values)  # the count of the highest level present
    step = ((h * w - last) / 255).floor()
    lut = ((hist.cumsum(1) - hist + (step / 2).floor()) / step.clamp_min(1)).floor().clamp(0, 255)
    out = lut.gather(1, levels) / 255
    out = torch.where(step > 0, out, levels.float() / 255)  # one level only: unchanged
    return out.reshape(b, c, h, w).to(x.dtype)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    step = (2.0 ** (8 - bits)).view(-1, 1, 1, 1)
    return (torch.floor(x * 255 / step) * step / 255).clamp(0, 1)


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    return torch.where(x >= threshold.view(-1, 1, 1, 1), 1 - x, x)


def solarize_add(x: Tensor, add: Tensor) -> Tensor:
    return torch.where(x < 0.5, (x + add.view(-1, 1, 1, 1)).clamp(max=1), x)


def saturation(x: Tensor, factor: Tensor) -> Tensor:
    return blend(x, gray(x).expand_as(x), factor) if x.shape[1] == 3 else x


def contrast(x: Tensor, factor: Tensor) -> Tensor:
    mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
    return blend(x, mean.expand_as(x), factor)


def brightness(x: Tensor, factor: Tensor) -> Tensor:
    return blend(x, torch.zeros_like(x), factor)


def sharpness(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's SMOOTH filter (3x3, centre 5, others 1, /13), the border pixels kept."""
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(x.shape[1], 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1])
    return blend(x, smooth, factor)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """A separable Gaussian blur per image (sigma per image), kernel of 2 ceil(3 sigma_max) + 1 taps."""
    radius = max(1, math.ceil(3 * float(sigma.max())))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # [B, taps]
    b, c, h, w = x.shape
    flat = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="reflect")
    k = kernel.repeat_interleave(c, 0)
    flat = F.conv2d(flat, k.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(flat, k.view(b * c, 1, -1, 1), groups=b * c)
    return flat.reshape(b, c, h, w)


def _signed(m: Tensor, g: torch.Generator) -> Tensor:
    return torch.where(torch.rand(m.shape, generator=g, device=m.device) < 0.5, -m, m)


# timm's increasing RandAugment ops ("inc1"): name -> op(images, magnitude in [0, 1], generator)
RAND_OPS: dict[str, Callable[[Tensor, Tensor, torch.Generator], Tensor]] = {
    "auto_contrast": lambda x, m, g: autocontrast(x),
    "equalize": lambda x, m, g: equalize(x),
    "invert": lambda x, m, g: 1 - x,
    "rotate": lambda x, m, g: rotate(x, _signed(30 * m, g)),
    "posterize": lambda x, m, g: posterize(x, 4 - (4 * m).floor()),
    "solarize": lambda x, m, g: solarize(x, 1 - m),
    "solarize_add": lambda x, m, g: solarize_add(x, (110 * m).floor() / 255),
    "color": lambda x, m, g: saturation(x, 1 + _signed(0.9 * m, g)),
    "contrast": lambda x, m, g: contrast(x, 1 + _signed(0.9 * m, g)),
    "brightness": lambda x, m, g: brightness(x, 1 + _signed(0.9 * m, g)),
    "sharpness": lambda x, m, g: sharpness(x, 1 + _signed(0.9 * m, g)),
    "shear_x": lambda x, m, g: shear(x, _signed(0.3 * m, g), 0),
    "shear_y": lambda x, m, g: shear(x, _signed(0.3 * m, g), 1),
    "translate_x": lambda x, m, g: translate(x, _signed(0.45 * m, g), 0),
    "translate_y": lambda x, m, g: translate(x, _signed(0.45 * m, g), 1),
}


def rand_augment(x: Tensor, n: int, magnitude: float, std: float, g: torch.Generator) -> Tensor:
    """timm's RandAugment per image: `n` ops drawn with replacement, each applied with probability 0.5 at a
    magnitude ~ N(magnitude, std) clipped to [0, 10] (of 10)."""
    ops = list(RAND_OPS.values())
    b, dev = len(x), x.device
    chosen = torch.randint(len(ops), (b, n), generator=g, device=dev)
    applied = torch.rand(b, n, generator=g, device=dev) < 0.5
    level = (magnitude + std * torch.randn(b, n, generator=g, device=dev)).clamp(0, 10) / 10
    for layer in range(n):
        for index, op in enumerate(ops):
            rows = ((chosen[:, layer] == index) & applied[:, layer]).nonzero().flatten()
            if len(rows):
                x = x.index_copy(0, rows, op(x[rows], level[rows, layer].to(x.dtype), g).clamp(0, 1))
    return x


def three_augment(x: Tensor, g: torch.Generator) -> Tensor:
    """DeiT III's ThreeAugment: per image one of grayscale, solarization (threshold 0.5) and Gaussian blur
    (sigma in [0.1, 2])."""
    pick = torch.randint(3, (len(x),), generator=g, device=x.device)
    sigma = 0.1 + 1.9 * torch.rand(len(x), generator=g, device=x.device)
    options = (gray(x).expand_as(x), solarize(x, torch.full_like(sigma, 0.5)), gaussian_blur(x, sigma))
    out = x
    for i, option in enumerate(options):
        out = torch.where((pick == i).view(-1, 1, 1, 1), option, out)
    return out


def color_jitter(x: Tensor, strength: float, g: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - s, 1 + s] per image, in a random
    order per batch (timm's colour jitter without hue)."""
    ops = (brightness, contrast, saturation)
    for i in torch.randperm(3, generator=g, device=x.device).tolist():
        factor = 1 + strength * (2 * torch.rand(len(x), generator=g, device=x.device) - 1)
        x = ops[i](x, factor.to(x.dtype))
    return x
