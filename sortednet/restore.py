"""Rebuild a nested model from its one-file checkpoint: nest the empty model as it was nested, fill it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from safetensors import safe_open
from torch import nn

from . import hf
from .checkpoint import OWN_KEYS, family_of, read_metadata, resolve
from .nest import NestedModel, nest, original_key
from .spec import NestingSpace
from .stitch.model import KIND as STITCHED
from .stitch.model import StitchedModel, load_stitched


def load(path: str | os.PathLike) -> NestedModel | StitchedModel:
    """Rebuild the nested or stitched model (every member) from a one-file checkpoint or a run folder."""
    path = resolve(path)
    meta = read_metadata(path)
    if meta.get("kind") == STITCHED:
        return load_stitched(path, meta)
    config = hf.config_from_dict(meta["config"])
    model = hf.empty_model(hf.model_class(meta["model_class"]), config)
    nested = nest_as_saved(model, meta)  # factorised layers get meta-device factors
    aliases = meta.get("aliases", {})
    with safe_open(str(path), framework="pt") as f:
        hf.fill_model(
            nested.model, lambda key, shape: f.get_tensor(aliases.get(key, key)), key_map=original_key
        )
    nested.apply_low_rank_info(meta.get("low_rank", {}))
    if meta.get("bn_calibrated"):
        with safe_open(str(path), framework="pt") as f:
            nested.read_stats(f.get_tensor, meta, f.keys())
    nested.eval()
    nested.metadata = {k: v for k, v in meta.items() if k not in OWN_KEYS}
    return nested


def nest_as_saved(model: nn.Module, meta: Mapping[str, Any]) -> NestedModel:
    """Nest `model` (of the header's class and config) as the checkpoint's model was: space, family, options."""
    options = meta.get("options") or {}
    space = NestingSpace.from_dict(meta["space"])
    return nest(
        model,
        space,
        family=family_of(meta),
        pooling=options.get("pooling"),
        head=options.get("head"),
        bn=options.get("bn"),
    )
