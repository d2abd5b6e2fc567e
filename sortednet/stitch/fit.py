"""Least-squares initialisation of the stitching layers from the anchors' activations (SN-Net): per join, the map
from the front anchor's hidden state after `cut` blocks to the back anchor's input to block `resume`, each anchor
run alone; a layer shared by several joins (SN-Net's window position) starts at the mean of their solutions."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .anchors import layer_list
from .layers import solve


def _output(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


@torch.no_grad()
def hidden_states(
    model: Any, name: str, inputs: Mapping[str, Any], wanted: set[int]
) -> dict[int, torch.Tensor]:
    """Anchor `name` run alone on `inputs`: its hidden state after s blocks for each s in `wanted` (0: the
    embeddings' output, the input of block 0). Not by `use(name)`: a space restricted to some stitches
    (`stitch.members`) need not hold the anchor."""
    layers = layer_list(model.anchors[name])
    captured: dict[int, torch.Tensor] = {}

    def first_input(module: Any, args: tuple, kwargs: dict) -> None:
        captured[0] = args[0] if args else kwargs["hidden_states"]

    handles = [
        layers[s - 1].register_forward_hook(lambda m, a, out, s=s: captured.__setitem__(s, _output(out)))
        for s in sorted(wanted)
        if s > 0
    ]
    if 0 in wanted:
        handles.append(layers[0].register_forward_pre_hook(first_input, with_kwargs=True))
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
    """Per join (`front:cut>back:resume`), X^T X and X^T Y of the normal equations (X: the front anchor's hidden
    state after `cut` blocks, with a ones column; Y: the back anchor's input to block `resume`) and the token
    count."""
    joins = list(dict.fromkeys(j for group in model.space.layer_joins().values() for j in group))
    wanted: dict[str, set[int]] = {n: set() for n in model.anchors}
    for j in joins:
        wanted[j.front].add(j.cut)
        wanted[j.back].add(j.resume)
    stats: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    was_training = model.training
    model.eval()
    try:
        for batch in itertools.islice(batches, max_batches):
            device = next(model.parameters()).device
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            mask = inputs.get("attention_mask")
            states = {n: hidden_states(model, n, inputs, w) for n, w in wanted.items() if w}
            grams: dict[tuple[str, int], torch.Tensor] = {}
            for j in joins:
                x = _tokens(states[j.front][j.cut], mask)  # type: ignore[index]
                y = _tokens(states[j.back][j.resume], mask)[:, :-1]  # type: ignore[index]
                key = (j.front, j.cut)
                if key not in grams:
                    grams[key] = x.T @ x  # type: ignore[index]
                xtx, xty, n = stats.get(str(j), (0, 0, 0))
                stats[str(j)] = (xtx + grams[key], xty + x.T @ y, n + x.shape[0])  # type: ignore[index]
    finally:
        model.train(was_training)
    return stats


def fit_stitches(
    model: Any, batches: Iterable[Mapping[str, Any]], max_batches: int | None = None
) -> dict[str, int]:
    """Set every stitching layer to its least-squares map (the mean of its joins' maps when it has several);
    returns the tokens each join's fit saw."""
    stats = stitch_statistics(model, batches, max_batches)
    if not stats and len(model.stitches):  # a space of anchors fits nothing
        raise ValueError("stitch calibration: no batches; give a loader of model inputs (calibration=...)")
    for key, joins in model.space.layer_joins().items():
        solutions = [solve(*stats[str(j)][:2], model.config.ridge) for j in joins]
        model.stitches[key].assign(torch.stack(solutions).mean(dim=0))
    return {name: n for name, (_, _, n) in stats.items()}
