"""The stitched model's modules: the stitching layer, and the routing that runs a stitch inside the back
anchor's own, unmodified forward (its layer list runs the route's blocks; its embeddings are the front's)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class StitchingLayer(nn.Module):
    """y = x W^T + b (d_in -> d_out), plus a rank-r update `(alpha / r) lora_b @ lora_a` when `rank > 0` (SN-Netv2's
    LoRA: alpha 1, so the update is scaled by 1/r): then the dense weight is frozen at its least-squares value and
    only the update and the bias train."""

    def __init__(self, d_in: int, d_out: int, rank: int = 0, alpha: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(d_out))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default
        self.rank = int(rank)
        self.scaling = float(alpha) / self.rank if self.rank else 0.0
        if self.rank:
            self.weight.requires_grad_(False)
            self.lora_a = nn.Parameter(torch.empty(self.rank, d_in))
            self.lora_b = nn.Parameter(torch.zeros(d_out, self.rank))  # zero: the update starts at the init
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # called as a block of the back anchor's layer loop: the blocks' other arguments are not its concern
        out = F.linear(hidden_states, self.weight, self.bias)
        if self.rank:
            out = out + self.scaling * F.linear(F.linear(hidden_states, self.lora_a), self.lora_b)
        return out

    def dense_weight(self) -> torch.Tensor:
        """The one d_out x d_in matrix the layer applies (the low-rank update merged)."""
        return self.weight + self.scaling * (self.lora_b @ self.lora_a) if self.rank else self.weight

    @torch.no_grad()
    def fit(self, xtx: torch.Tensor, xty: torch.Tensor, ridge: float) -> None:
        """Least squares from the normal equations of [X 1] W' = Y (X^T X and X^T Y with a ones column last)."""
        self.assign(solve(xtx, xty, ridge))

    @torch.no_grad()
    def assign(self, solution: torch.Tensor) -> None:
        """Weight and bias from a (d_in + 1) x d_out solution of [X 1] W' = Y (the bias its last row)."""
        self.weight.copy_(solution[:-1].T.to(self.weight.dtype))
        self.bias.copy_(solution[-1].to(self.bias.dtype))


def solve(xtx: torch.Tensor, xty: torch.Tensor, ridge: float) -> torch.Tensor:
    """The solution W' of the normal equations (X^T X + ridge x mean diagonal) W' = X^T Y."""
    n = xtx.shape[0]
    scale = ridge * float(xtx.diagonal()[:-1].mean().clamp_min(1e-12))
    return torch.linalg.solve(xtx + scale * torch.eye(n, dtype=xtx.dtype, device=xtx.device), xty)


class Route:
    """The active member, as the anchors' embeddings see it: whose forward runs (`host`) and whose embeddings
    (`start`). The host's layer list (a sortednet.layers.LayerList) holds the blocks its loop runs."""

    __slots__ = ("host", "start")

    def __init__(self, host: str) -> None:
        self.host, self.start = host, host

    def set(self, host: str, start: str) -> None:
        self.host, self.start = host, start


def route_embeddings(
    module: nn.Module, route: Route, owner: str, lookup: Callable[[str], Callable[..., Any]]
) -> None:
    """While `owner` hosts a stitch that starts in another anchor, `module` (owner's embeddings) runs that
    anchor's embeddings instead: an instance-level `forward` (as accelerate's hooks do), so the module, its keys
    and its class stay the model's own, and the owner's own embeddings never run for such a stitch."""
    original = module.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        if route.host == owner and route.start != owner:
            return lookup(route.start)(*args, **kwargs)
        return original(*args, **kwargs)

    module.forward = forward
    module._sortednet_original_forward = original  # type: ignore[attr-defined]


def unroute_embeddings(module: nn.Module) -> None:
    original = module.__dict__.pop("_sortednet_original_forward", None)
    if original is not None:
        del module.forward
