"""One stitched network out of a stitched model: each anchor cut to the blocks the network runs, and its stitching
layers, as a StitchedModel of one member (saved as one file, read back by sn.load).

No transformers class runs blocks of two widths joined by a projection, so a mixed stitch cannot be a plain
transformers folder; an anchor on its own can (`StitchedModel.anchor`)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from .anchors import layer_list
from .model import StitchedModel, load_stitched
from .space import Stitch


def truncated(model: nn.Module, keep: Sequence[int]) -> nn.Module:
    """A plain copy of `model` holding only its blocks `keep`, in that order (renumbered from 0)."""
    layers = layer_list(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep]
    renumber = {old: new for new, old in enumerate(keep)}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    state = {}
    for key, value in model.state_dict().items():
        found = pattern.match(key)
        if found is None:
            state[key] = value
        elif int(found.group(1)) in renumber:
            state[f"{prefix}.{renumber[int(found.group(1))]}.{key[found.end() :]}"] = value
    out = type(model)(config)
    out.load_state_dict(state)
    return out.to(next(model.parameters()).device).eval()


def single_network(stitched: StitchedModel, member: Stitch | str) -> StitchedModel:
    """The network `member` (a stitch or a route) alone: a StitchedModel whose one member runs exactly as `member`
    does in `stitched`. Each anchor keeps the blocks the member runs, in the member's order, so that
    `small:4>large:8` becomes `small:4>large:0` and `small:4>large:4-9>small:9` becomes
    `small:4>large:0-5>small:4` (small holding its blocks 0-3 and 9-, large its blocks 4-8)."""
    member = stitched.space.normalize(member)
    if member.is_anchor:
        raise ValueError(
            f"{member} is an anchor: export it as a plain transformers model (StitchedModel.anchor)"
        )
    kept: dict[str, list[int]] = {}
    segments = []
    for name, start, stop in member.segments:
        depth = len(layer_list(stitched.anchors[name]))
        blocks = range(start, depth if stop is None else stop)
        first = len(kept.setdefault(name, []))
        kept[name] += blocks
        segments.append((name, first, first + len(blocks)))
    anchors = {name: truncated(stitched.anchors[name], keep) for name, keep in kept.items()}
    (front, _, cut), (back, resume, stop), *rest = segments
    alone = (
        Stitch(front, cut, back, resume)
        if not rest
        else Stitch(front, cut, back, resume, stop, rest[0][0], rest[0][1])
    )
    config = replace(stitched.config, share="stitch")  # one network: a layer per join, named after it
    single = StitchedModel(anchors, config, stitched.kind, members=[alone])  # type: ignore[dict-item]
    for new, old in zip(alone.joins, stitched.space.layer_keys(member), strict=True):
        single.stitches[str(new)].load_state_dict(stitched.stitches[old].state_dict())
    single.metadata = {"stitched_from": str(member)}
    return single.eval()


def read_member(path: Path, meta: Mapping[str, Any], member: Stitch | str) -> nn.Module:
    """One member of a stitched checkpoint on its own: an anchor as a plain transformers model; a stitch of two
    anchors as a StitchedModel of that one network (no transformers class runs blocks of two widths)."""
    stitched = load_stitched(path, meta)
    chosen = stitched.space.normalize(member)
    return stitched.anchor(chosen.front) if chosen.is_anchor else single_network(stitched, chosen)
