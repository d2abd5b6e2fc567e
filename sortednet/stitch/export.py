"""One stitched network out of a stitched model: the front anchor cut to its first blocks, the back anchor to its
last, and their stitching layer, as a StitchedModel of one member (saved as one file, read back by sn.load).

No transformers class runs blocks of two widths joined by a projection, so a mixed stitch cannot be a plain
transformers folder; an anchor on its own can (`StitchedModel.anchor`)."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from .anchors import layer_list
from .model import StitchedModel, load_stitched
from .space import Stitch


def truncated(model: nn.Module, start: int, stop: int) -> nn.Module:
    """A plain copy of `model` holding only its blocks start..stop-1 (renumbered from 0)."""
    layers = layer_list(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = stop - start
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[start:stop]
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    state = {}
    for key, value in model.state_dict().items():
        found = pattern.match(key)
        if found is None:
            state[key] = value
        elif start <= int(found.group(1)) < stop:
            state[f"{prefix}.{int(found.group(1)) - start}.{key[found.end() :]}"] = value
    out = type(model)(config)
    out.load_state_dict(state)
    return out.to(next(model.parameters()).device).eval()


def single_network(stitched: StitchedModel, member: Stitch | str) -> StitchedModel:
    """The network `member` (a mixed stitch) alone: a StitchedModel whose one member runs exactly as `member` does
    in `stitched`, spelt `front:cut>back:0` (the back anchor now starts at its block `resume`)."""
    member = stitched.space.normalize(member)
    if member.is_anchor:
        raise ValueError(
            f"{member} is an anchor: export it as a plain transformers model (StitchedModel.anchor)"
        )
    front = truncated(stitched.anchors[member.front], 0, member.cut)  # type: ignore[arg-type]
    back_source = stitched.anchors[member.back]  # type: ignore[index]
    back = truncated(back_source, member.resume, len(layer_list(back_source)))  # type: ignore[arg-type]
    alone = Stitch(member.front, member.cut, member.back, 0)
    single = StitchedModel(
        {member.front: front, member.back: back},
        stitched.config,
        stitched.kind,
        members=[alone],  # type: ignore[dict-item]
    )
    single.stitches[str(alone)].load_state_dict(stitched.stitches[str(member)].state_dict())
    single.metadata = {"stitched_from": str(member)}
    return single.eval()


def read_member(path: Path, meta: Mapping[str, Any], member: Stitch | str) -> nn.Module:
    """One member of a stitched checkpoint on its own: an anchor as a plain transformers model; a stitch of two
    anchors as a StitchedModel of that one network (no transformers class runs blocks of two widths)."""
    stitched = load_stitched(path, meta)
    chosen = stitched.space.normalize(member)
    return stitched.anchor(chosen.front) if chosen.is_anchor else single_network(stitched, chosen)
