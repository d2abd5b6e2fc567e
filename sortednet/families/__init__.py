"""Family adapters, registered by `config.model_type`. Adding a family is adding one adapter.

Third-party packages register theirs through the entry-point group `sortednet.families`: each entry point
names a Family, or a callable returning one Family or several. They are loaded once, on the first lookup.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from .base import Family, Projection
from .bert import BERT
from .deberta_v2 import DEBERTA_V2
from .distilbert import DISTILBERT
from .gemma import GEMMA
from .gpt2 import GPT2
from .llama import LLAMA
from .phi3 import PHI3
from .qwen3 import QWEN3
from .stages import CONVNEXT, RESNET, SWIN, StageFamily
from .vit import VIT

ENTRY_POINT_GROUP = "sortednet.families"
BUILT_IN = (BERT, GPT2, LLAMA, VIT, QWEN3, PHI3, GEMMA, DISTILBERT, DEBERTA_V2, RESNET, CONVNEXT, SWIN)
AnyFamily = Family | StageFamily

_REGISTRY: dict[str, Family] = {}
_entry_points_loaded = False


def register(family: AnyFamily, override: bool = False) -> AnyFamily:
    """Make `nest()` accept models whose `config.model_type` is one of `family.model_types`.

    A model type that another family already claims is refused unless `override=True`; registering an equal
    family again changes nothing."""
    if not isinstance(family, (Family, StageFamily)):
        raise TypeError(f"register() takes a sortednet.families.Family; got {type(family).__name__}")
    if not override:
        for model_type in family.model_types:
            held = _REGISTRY.get(model_type)
            if held is not None and held != family:
                raise ValueError(
                    f"model type {model_type!r} is already registered by family {held.name!r}; "
                    f"pass override=True to replace it with family {family.name!r}"
                )
    for model_type in family.model_types:
        _REGISTRY[model_type] = family
    return family


def family_from_dict(data: Any) -> AnyFamily:
    """The family a checkpoint header stores: a StageFamily carries kind="stages", a Family no kind."""
    return StageFamily.from_dict(data) if data.get("kind") == "stages" else Family.from_dict(data)


def registered(model_type: str | None) -> AnyFamily | None:
    """The family registered for a model type, or None."""
    _load_entry_points()
    return _REGISTRY.get(model_type) if model_type is not None else None


def supported_model_types() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def family_for(config: Any) -> AnyFamily:
    model_type = getattr(config, "model_type", None)
    family = registered(model_type)
    if family is None:
        raise ValueError(
            f"model family {model_type!r} (config.model_type) is not supported; supported: "
            f"{', '.join(supported_model_types())}; to add one, describe it with sortednet.families.Family, "
            f"check it with sortednet.check_family and call sortednet.families.register(...)"
        )
    return family


def _load_entry_points() -> None:
    """Register the families that installed packages declare. A broken or clashing entry point is skipped
    with a warning naming it: sortednet keeps working with the families it has."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            for family in _families_of(entry.load()):
                register(family)
        except Exception as err:  # a third-party plugin must not break sortednet for everyone
            warnings.warn(
                f"sortednet: skipped the family from entry point {entry.name!r} ({entry.value}): {err}",
                stacklevel=2,
            )


def _families_of(obj: Any) -> Iterable[Family]:
    if isinstance(obj, Family):
        return [obj]
    if callable(obj):
        obj = obj()
    families = [obj] if isinstance(obj, Family) else list(obj)
    for family in families:
        if not isinstance(family, (Family, StageFamily)):
            raise TypeError(f"gave a {type(family).__name__}, not a sortednet.families.Family")
    return families


for _family in BUILT_IN:
    register(_family)

__all__ = [
    "AnyFamily",
    "ENTRY_POINT_GROUP",
    "Family",
    "StageFamily",
    "family_from_dict",
    "Projection",
    "family_for",
    "register",
    "registered",
    "supported_model_types",
]
