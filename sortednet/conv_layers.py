"""Sliceable wrappers for convolutional networks (PEFT-style: the original module is `base_layer`).

Input width from the input (`x.shape[1]`, channels first), output width from `out`, an int the nested model
sets on a switch. At full width every wrapper calls its base layer, so the largest subnet is the original.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Wrapper
from .slice_grad import linear


class SlicedConv2d(Wrapper):
    """nn.Conv2d over the first `x.shape[1]` input channels giving the first `out` output channels. A
    depthwise conv (groups == in == out channels) keeps groups == channels: it runs the first c filters."""

    def __init__(self, base_layer: nn.Conv2d) -> None:
        super().__init__()
        if base_layer.padding_mode != "zeros":
            raise ValueError(
                f"cannot slice a Conv2d with padding_mode={base_layer.padding_mode!r}; allowed: zeros"
            )
        self.depthwise = base_layer.groups == base_layer.in_channels == base_layer.out_channels > 1
        if base_layer.groups != 1 and not self.depthwise:
            raise ValueError(
                f"cannot slice a grouped Conv2d (groups={base_layer.groups} of {base_layer.in_channels} channels): "
                "a prefix of its channels does not keep the groups; allowed: groups 1 or depthwise"
            )
        self.base_layer = base_layer
        self.out = base_layer.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, c = self.base_layer, x.shape[1]
        if c == base.in_channels and self.out == base.out_channels:
            return base(x)
        bias = base.bias
        if self.depthwise:
            weight, groups = base.weight[:c], c
            bias = None if bias is None else bias[:c]
        else:
            weight, groups = base.weight[: self.out, :c], 1
            bias = None if bias is None else bias[: self.out]
        return F.conv2d(x, weight, bias, base.stride, base.padding, base.dilation, groups)

    def extra_repr(self) -> str:
        return f"out={self.out}, depthwise={self.depthwise}"


class ChannelLinear(Wrapper):
    """nn.Linear over the last `x.shape[-1]` features giving the first `out` (ConvNeXt's pointwise convs, the
    classifier); the weight's gradient goes into its slice (sortednet.slice_grad)."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.out = base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if x.shape[-1] == base.in_features and self.out == base.out_features:
            return base(x)
        return linear(x, base.weight, base.bias, 0, self.out)

    def extra_repr(self) -> str:
        return f"out={self.out}"


class ChannelsFirstNorm(Wrapper):
    """A LayerNorm over the channels of an NCHW tensor (ConvNeXt's channels_first LayerNorm), first c only."""

    def __init__(self, base_layer: nn.LayerNorm) -> None:
        super().__init__()
        self.base_layer = base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base, c = self.base_layer, x.shape[1]
        if c == base.weight.shape[0]:
            return base(x)
        h = F.layer_norm(x.permute(0, 2, 3, 1), (c,), base.weight[:c], base.bias[:c], base.eps)
        return h.permute(0, 3, 1, 2)


class SlicedBatchNorm2d(Wrapper):
    """BatchNorm2d over the first `x.shape[1]` channels.

    Training normalises with the batch's statistics and updates the prefix of the running ones (as
    BatchNorm does). In eval, `stats` (a subnet's calibrated (mean, var), set on a switch) replaces the running
    statistics. `calibrating` (a [mean, var, batches seen] list, [None, None, 0] to start) makes a forward
    normalise with batch statistics and fold them into that list's cumulative average (US-Nets' calibration).

    `private` (switchable BN, Slimmable): a BatchNorm per smaller width, keyed by that width, with its own
    affine and statistics; the full width keeps the base layer.
    """

    def __init__(self, base_layer: nn.BatchNorm2d, private_widths: tuple[int, ...] = ()) -> None:
        super().__init__()
        if not base_layer.affine or not base_layer.track_running_stats:
            raise ValueError("cannot slice a BatchNorm2d without affine weights and running statistics")
        self.base_layer = base_layer
        self.stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.calibrating: list | None = None
        self.private = None
        if private_widths:
            self.private = nn.ModuleDict({str(w): _cut(base_layer, w) for w in private_widths})

    def norm_for(self, c: int) -> nn.BatchNorm2d:
        """The BatchNorm whose affine (and statistics) width c uses."""
        if self.private is not None and c != self.base_layer.num_features:
            return self.private[str(c)]
        return self.base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        bn = self.norm_for(c)
        weight, bias = bn.weight[:c], bn.bias[:c]
        if self.calibrating is not None:
            mean, var, seen = self.calibrating
            if mean is None:  # the first calibration batch: statistics at the width that runs
                mean = torch.zeros(c, device=x.device, dtype=bn.running_mean.dtype)
                var = torch.ones(c, device=x.device, dtype=bn.running_var.dtype)
            self.calibrating[:] = [mean, var, seen + 1]
            return F.batch_norm(x, mean, var, weight, bias, True, 1.0 / (seen + 1), bn.eps)
        if self.training:
            if c == bn.num_features:
                return bn(x)
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            return F.batch_norm(
                x, bn.running_mean[:c], bn.running_var[:c], weight, bias, True, momentum, bn.eps
            )
        if self.stats is not None:
            return F.batch_norm(x, self.stats[0], self.stats[1], weight, bias, False, 0.0, bn.eps)
        if c == bn.num_features:
            return bn(x)
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], weight, bias, False, 0.0, bn.eps)

    def extra_repr(self) -> str:
        widths = list(self.private) if self.private is not None else []
        return f"private_widths={widths}" if widths else ""


def _cut(bn: nn.BatchNorm2d, width: int) -> nn.BatchNorm2d:
    """A BatchNorm of `width` channels starting from the prefix of `bn` (its affine and statistics)."""
    new = nn.BatchNorm2d(width, bn.eps, bn.momentum, device=bn.weight.device, dtype=bn.weight.dtype)
    if bn.weight.device.type != "meta":
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, name).copy_(getattr(bn, name)[:width])
    new.weight.requires_grad_(bn.weight.requires_grad)
    new.bias.requires_grad_(bn.bias.requires_grad)
    return new


class ChannelScale:
    """Forward pre-hook on a block: its channel-wise scale parameter (ConvNeXt's layer scale) is read as the
    prefix of the block's input width; at full width the parameter itself."""

    def __init__(self, name: str) -> None:
        self.name = name

    def attach(self, module: nn.Module) -> Any:
        """Register on `module`; the handle's `remove()` also drops a scale left shadowing the parameter."""
        handle = module.register_forward_pre_hook(self)
        name = self.name

        class Handle:
            def remove(self) -> None:
                handle.remove()
                module.__dict__.pop(name, None)

        return Handle()

    def __call__(self, module: nn.Module, args: tuple) -> None:
        param = module._parameters.get(self.name)
        if param is None:
            return
        c = args[0].shape[1]
        if c == param.shape[0]:
            module.__dict__.pop(self.name, None)
        else:
            module.__dict__[self.name] = param[:c]  # shadows the parameter for this forward only
