"""Family adapters, registered by `config.model_type`. Adding a family is adding one adapter."""

from __future__ import annotations

from typing import Any

from .base import Family, Projection
from .bert import BERT
from .gpt2 import GPT2
from .llama import LLAMA
from .vit import VIT

_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make `nest()` accept models whose `config.model_type` is one of `family.model_types`."""
    for model_type in family.model_types:
        _REGISTRY[model_type] = family
    return family


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def family_for(config: Any) -> Family:
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise ValueError(
            f"model family {model_type!r} (config.model_type) is not supported; supported: "
            f"{', '.join(supported_model_types())}; to add one, describe it with sortednet.families.Family "
            f"and call sortednet.families.register(...)"
        )
    return _REGISTRY[model_type]


for _family in (BERT, GPT2, LLAMA, VIT):
    register(_family)

__all__ = ["Family", "Projection", "family_for", "register", "supported_model_types"]
