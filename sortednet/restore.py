"""Fill a nested model rebuilt as its checkpoint's header says (sortednet.api.load) with the file's tensors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open

from . import hf
from .checkpoint import OWN_KEYS
from .layers import original_key
from .nest import NestedModel


def fill(nested: NestedModel, path: Path, meta: Mapping[str, Any]) -> NestedModel:
    """Assign every tensor of the file to `nested` (built empty, as the header says): weights, factorised cuts,
    what the kind stores beside the weights (calibrated BatchNorm statistics); eval mode, the run's metadata."""
    aliases = meta.get("aliases", {})
    with safe_open(str(path), framework="pt") as f:
        hf.fill_model(
            nested.model, lambda key, shape: f.get_tensor(aliases.get(key, key)), key_map=original_key
        )
        nested.apply_low_rank_info(meta.get("low_rank", {}))
        nested.read_stats(f.get_tensor, meta, f.keys())
    nested.eval()
    nested.metadata = {k: v for k, v in meta.items() if k not in OWN_KEYS}
    return nested
