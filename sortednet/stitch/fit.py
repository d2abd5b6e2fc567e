"""Least-squares initialisation of the stitching layers from the anchors' activations (SN-Net)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .anchors import layer_list


def _output(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


@torch.no_grad()
def block_outputs(
    model: Any, name: str, inputs: Mapping[str, Any], wanted: set[int]
) -> dict[int, torch.Tensor]:
    """Anchor `name` run alone on `inputs`: the output of each of its blocks in `wanted` (0-based). Not by
    `use(name)`: a space restricted to some stitches (`stitch.members`) need not hold the anchor."""
    layers = layer_list(model.anchors[name])
    captured: dict[int, torch.Tensor] = {}
    handles = [
        layers[i].register_forward_hook(lambda m, a, out, i=i: captured.__setitem__(i, _output(out)))
        for i in sorted(wanted)
    ]
    try:
        with model.alone(name) as anchor:
            anchor(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _tokens(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(tokens, width) in float64, padding dropped, a ones column appended (the bias)."""
    flat = x.reshape(-1, x.shape[-1]).double()
    if mask is not None:
        flat = flat[mask.reshape(-1).bool()]
    return torch.cat([flat, flat.new_ones(flat.shape[0], 1)], dim=1)


@torch.no_grad()
def stitch_statistics(
    model: Any, batches: Iterable[Mapping[str, Any]], max_batches: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor, int]]:
    """Per stitch, X^T X and X^T Y of the normal equations (X: the front anchor's activations after `cut`
    blocks, with a ones column; Y: the back anchor's input to block `resume`) and the token count."""
    stitches = [m for m in model.space.subnets() if not m.is_anchor]
    wanted: dict[str, set[int]] = {n: set() for n in model.anchors}
    for m in stitches:
        wanted[m.front].add(m.cut - 1)  # type: ignore[operator]
        wanted[m.back].add(m.resume - 1)  # type: ignore[arg-type, operator]
    stats: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in itertools.islice(batches, max_batches):
            device = next(model.parameters()).device
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            mask = inputs.get("attention_mask")
            acts = {n: block_outputs(model, n, inputs, w) for n, w in wanted.items() if w}
            grams: dict[tuple[str, int], torch.Tensor] = {}
            for m in stitches:
                x = _tokens(acts[m.front][m.cut - 1], mask)  # type: ignore[operator]
                y = _tokens(acts[m.back][m.resume - 1], mask)[:, :-1]  # type: ignore[arg-type, operator]
                key = (m.front, m.cut)
                if key not in grams:
                    grams[key] = x.T @ x  # type: ignore[index]
                xtx, xty, n = stats.get(str(m), (0, 0, 0))
                stats[str(m)] = (xtx + grams[key], xty + x.T @ y, n + x.shape[0])  # type: ignore[index]
    finally:
        model.train(was_training)
    return stats


def fit_stitches(
    model: Any, batches: Iterable[Mapping[str, Any]], max_batches: int | None = None
) -> dict[str, int]:
    """Set every stitching layer to its least-squares map; returns the tokens each fit saw."""
    stats = stitch_statistics(model, batches, max_batches)
    if not stats and any(not m.is_anchor for m in model.space.subnets()):  # a space of anchors fits nothing
        raise ValueError("stitch calibration: no batches; give a loader of model inputs (calibration=...)")
    for name, (xtx, xty, _) in stats.items():
        model.stitches[name].fit(xtx, xty, model.config.ridge)
    return {name: n for name, (_, _, n) in stats.items()}
