"""Importance order of a pretrained model, before training it nested; and per-layer importance for depth.

`reorder(model, batches, method)` scores every FFN neuron, attention head (kv groups as a whole, then heads within
a group) and, when asked, hidden channel, and permutes each group so that the most important units come first:
the prefix that a nested sub-model keeps is then the part that matters (DynaBERT's rewiring, OFA's channel
sorting, Minitron's activation importance). The model's function is unchanged. Methods:

- `activation`: mean |input| of each unit where it enters a projection, on calibration batches (Minitron);
- `magnitude`: squared weight norm of each unit's slices, each tensor normalised to sum 1 (no data);
- `taylor`: first-order loss change if the unit were removed, |sum of w * dL/dw over its weights|, summed per
  batch (DynaBERT, OFA).

Depth has no function-preserving permutation; `block_influence` reports how much each layer changes its input
(`influence_record` / `influence_line`: the form the checkpoint metadata, sortednet-info and -eval use).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .families import Family, family_for
from .many import ManyInOneModel
from .permute import PERMUTABLE, Site, apply_permutation, layer_list, sites, target, unique
from .spec import DIMENSIONS

METHODS = ("activation", "magnitude", "taylor")
Batch = Mapping[str, Any]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
# group -> (score per unit, score per kv group or None); the order sorts kv groups, then units within a group
Scores = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


def reorder(
    model: nn.Module,
    batches: Iterable[Batch] = (),
    method: str = "activation",
    dims: Iterable[str] | None = None,
    loss: LossFn | None = None,
) -> dict[str, Any]:
    """Permute `model` in place by importance, before training; return the JSON-serialisable record.

    `model` is a plain transformers model (then `nest()` it) or a NestedModel (not nested with rank): then
    `dims` defaults to its space's dims and the record goes into `model.metadata["permutation"]`, which the
    one-file checkpoint keeps. `depth` and `rank` in `dims` are skipped (layer order; singular values); a
    plain model's default is ffn and heads. With `hidden`, a model without a head (e.g. BertModel) gives its
    hidden states in the new channel order: new_out = old_out[..., record["permutations"]["hidden"]].
    `loss(model, batch) -> scalar` is for `taylor`; by default the model's own loss (batches with labels).
    """
    inner, family, nested = target(model, "reorder()")
    if nested is not None and "permutation" in nested.metadata:
        raise ValueError(
            "reorder(): this nested model is already reordered (metadata['permutation']); reorder once"
        )
    if method not in METHODS:
        raise ValueError(f"reorder method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    if dims is None:
        dims = nested.space.dims if nested is not None else ("ffn", "heads")
    chosen = _permutable(dims, family)
    batches = list(batches)
    if method != "magnitude" and not batches:
        raise ValueError(
            f"reorder method={method!r} needs calibration batches and got none; method='magnitude' needs no data"
        )
    groups = sites(inner, family, chosen)
    full = family.full_sizes(inner.config)
    group_size = full["heads"] // full["kv_heads"]
    largest = nested.use(nested.space.largest) if nested is not None else contextlib.nullcontext()
    with largest, _scoring(inner):  # at full width every wrapper calls its base layer, where the hooks are
        scores = SCORERS[method](inner, groups, batches, loss or _model_loss, group_size)
    record = {
        "method": method,
        "dims": [d for d in PERMUTABLE if d in chosen],
        "batches": len(batches),
        "permutations": {key: _order(*scores[key], group_size).tolist() for key in groups},
    }
    apply_permutation(model, record)
    if nested is not None:
        nested.metadata["permutation"] = record
    return record


def _permutable(dims: Iterable[str], family: Family) -> set[str]:
    chosen = set()
    for dim in dims:
        if dim not in DIMENSIONS:
            raise ValueError(f"reorder dims: unknown dimension {dim!r}; allowed: {', '.join(PERMUTABLE)}")
        if dim in ("depth", "rank"):
            continue
        if dim not in PERMUTABLE or dim not in family.dims:
            allowed = ", ".join(d for d in PERMUTABLE if d in family.dims)
            raise ValueError(
                f"reorder dims: {dim!r} cannot be reordered for family {family.name!r}; allowed: {allowed}"
            )
        chosen.add(dim)
    return chosen


def _order(unit: torch.Tensor, group: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """Most important first; ties keep their original order (all-equal scores give the identity)."""
    if group is None:
        return torch.argsort(-unit, stable=True)
    heads = []
    for k in torch.argsort(-group, stable=True).tolist():
        within = unit[k * group_size : (k + 1) * group_size]
        heads.append(k * group_size + torch.argsort(-within, stable=True))
    return torch.cat(heads)


@contextlib.contextmanager
def _scoring(model: nn.Module):
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _to_device(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _model_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    out = model(**batch)
    if getattr(out, "loss", None) is None:
        raise ValueError(
            f"reorder method='taylor' needs a loss and {type(model).__name__} returned none; give the batches "
            f"labels or pass loss=fn(model, batch) -> scalar"
        )
    return out.loss


def _empty(groups: Mapping[str, list[Site]], group_size: int) -> Scores:
    scores: Scores = {}
    for key, group_sites in groups.items():
        n = next(s.units for s in group_sites if not s.kv)
        kv = torch.zeros(n // group_size, dtype=torch.float64) if key.endswith(".heads") else None
        scores[key] = (torch.zeros(n, dtype=torch.float64), kv)
    return scores


def _with_group_sums(scores: Scores, group_size: int) -> Scores:
    """Activation and magnitude: a kv group scores its own weights plus the sum of its query heads."""
    return {
        key: (unit, None if kv is None else kv + unit.view(-1, group_size).sum(1))
        for key, (unit, kv) in scores.items()
    }


def activation_scores(model, groups, batches, loss, group_size) -> Scores:
    scores = _empty(groups, group_size)
    watched: dict[nn.Module, list[tuple[str, Site]]] = {}
    for key, group_sites in groups.items():
        for s in group_sites:
            if s.is_input:
                watched.setdefault(s.owner, []).append((key, s))
    sums = {m: None for m in watched}
    counts = dict.fromkeys(watched, 0.0)
    mask: list[torch.Tensor | None] = [None]

    def hook(module: nn.Module, args: tuple) -> None:
        x = args[0].detach().abs().double()
        m = mask[0]
        if m is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(m.shape):
            w = m.to(x.dtype)[..., None]
            total, count = (x * w).sum((0, 1)), float(w.sum())
        else:
            total, count = x.reshape(-1, x.shape[-1]).sum(0), float(x[..., 0].numel())
        sums[module] = total if sums[module] is None else sums[module] + total
        counts[module] += count

    handles = [m.register_forward_pre_hook(hook) for m in watched]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in batches:
                batch = _to_device(batch, device)
                mask[0] = batch.get("attention_mask")
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    for module, entries in watched.items():
        if sums[module] is None:
            continue  # never ran (e.g. an unused head)
        mean = sums[module].cpu() / max(counts[module], 1.0)
        for key, s in entries:
            scores[key][0].add_(mean.narrow(0, s.offset, s.units * s.size).view(s.units, s.size).sum(1))
    return _with_group_sums(scores, group_size)


def magnitude_scores(model, groups, batches, loss, group_size) -> Scores:
    scores = _empty(groups, group_size)
    for key, group_sites in groups.items():
        for s in unique(group_sites):
            squares = s.block().double().pow(2).cpu()
            total = float(squares.sum())
            if total > 0:
                unit, kv = scores[key]
                (kv if s.kv else unit).add_(s.per_unit(squares) / total)
    return _with_group_sums(scores, group_size)


def taylor_scores(model, groups, batches, loss, group_size) -> Scores:
    scores = _empty(groups, group_size)
    per_group = {key: unique(group_sites) for key, group_sites in groups.items()}
    params = list({id(s.param): s.param for ss in per_group.values() for s in ss}.values())
    flags = [p.requires_grad for p in params]
    device = next(model.parameters()).device
    try:
        for p in params:
            p.requires_grad_(True)
        for batch in batches:
            grads = torch.autograd.grad(loss(model, _to_device(batch, device)), params, allow_unused=True)
            by_param = {id(p): g for p, g in zip(params, grads, strict=True)}
            for key, group_sites in per_group.items():
                unit, kv = scores[key]
                unit_batch, kv_batch = torch.zeros_like(unit), None if kv is None else torch.zeros_like(kv)
                for s in group_sites:
                    g = by_param[id(s.param)]
                    if g is None:
                        continue
                    g = g.detach().narrow(s.axis, s.offset, s.units * s.size)
                    contribution = s.per_unit((s.block() * g).double().cpu())
                    (kv_batch if s.kv else unit_batch).add_(contribution)
                unit.add_(unit_batch.abs())
                if kv is not None:
                    kv.add_((kv_batch + unit_batch.view(-1, group_size).sum(1)).abs())
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    return scores


SCORERS = {"activation": activation_scores, "magnitude": magnitude_scores, "taylor": taylor_scores}


def block_influence(model: nn.Module, batches: Iterable[Batch]) -> list[float]:
    """Per layer, 1 - cos(input, output) of its hidden states, averaged over (unpadded) tokens of `batches`.

    Small values mark layers that barely change the residual stream: cheap to cut with `depth` (ShortGPT's
    block influence). Takes a plain or a many-in-one model (run at its largest member: the layers of
    `layer_host()`, a stitched model's largest anchor).
    """
    if isinstance(model, ManyInOneModel):
        host = model.layer_host()
        if host is None:
            raise ValueError(f"block influence is for layer lists; a {type(model).__name__} has none")
        with model.use(model.space.largest):
            return _block_influence(host[0], host[1], batches)
    return _block_influence(model, family_for(getattr(model, "config", None)), batches)


def _block_influence(model: nn.Module, family: Family, batches: Iterable[Batch]) -> list[float]:
    layers = layer_list(model, family)
    totals, counts = [0.0] * len(layers), [0.0] * len(layers)
    inputs: list[torch.Tensor | None] = [None] * len(layers)
    mask: list[torch.Tensor | None] = [None]

    def before(i: int):
        def hook(module, args, kwargs):
            inputs[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    def after(i: int):
        def hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(inputs[i].double(), out.double(), dim=-1)
            m = mask[0]
            w = m.to(cos.dtype) if m is not None and m.shape == cos.shape else torch.ones_like(cos)
            totals[i] += float(((1 - cos) * w).sum())
            counts[i] += float(w.sum())

        return hook

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(before(i), with_kwargs=True))
        handles.append(layer.register_forward_hook(after(i), with_kwargs=True))
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = _to_device(batch, device)
                mask[0] = batch.get("attention_mask")
                model(**batch)
    finally:
        model.train(training)
        for h in handles:
            h.remove()
    return [t / c if c else float("nan") for t, c in zip(totals, counts, strict=True)]


def influence_record(
    model: ManyInOneModel, batches: Iterable[Mapping[str, Any]], what: str
) -> dict[str, Any]:
    """Block influence of every layer (1 - cos(input, output)) on `batches` (labels dropped), as stored in the
    checkpoint metadata under "block_influence"."""
    if model.layer_host() is None:  # stage families: blocks change shape
        return {"values": [], "data": what, "batches": 0, "skipped": "per-layer influence is for layer lists"}
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    values = block_influence(model, batches)
    return {"values": [round(v, 6) for v in values], "data": what, "batches": len(batches)}


def influence_line(record: Mapping[str, Any]) -> str:
    values = record["values"]
    if not values:
        return f"block influence: not measured ({record.get('skipped', 'no layers')})"
    cheapest = sorted(range(len(values)), key=values.__getitem__)[: max(1, len(values) // 3)]
    return (
        "block influence per layer (1 - cos(input, output), low = cheap to cut): "
        + "  ".join(f"{i}: {v:.3f}" for i, v in enumerate(values))
        + f"; cheapest: {', '.join(str(i) for i in sorted(cheapest))}"
    )
