"""What a nested checkpoint's header must hold (the nested kinds' `check_header`, sortednet.api)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import damaged
from .spec import NestingSpace

# what a nested checkpoint's header must hold: field -> the types it may have
HEADER_FIELDS: dict[str, tuple[type, ...]] = {
    "model_class": (str,),
    "config": (dict,),
    "space": (dict,),
    "aliases": (dict,),
    "low_rank": (dict,),
}
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "eval_table": (list,),
    "train_config": (dict,),
    "global_step": (int,),
    "options": (dict,),
    "nonfinite": (list,),
    "huge": (list,),
    "family": (dict,),
    "permutation": (dict,),
    "block_influence": (dict,),
}


def check_header(path: Path, meta: Mapping[str, Any]) -> None:
    """The fields a nested checkpoint needs, each of the right type (one line naming the first that is not)."""
    for fields, required in ((HEADER_FIELDS, True), (OPTIONAL_FIELDS, False)):
        for name, types in fields.items():
            if name not in meta and not required:
                continue
            if not isinstance(meta.get(name), types) or (
                name == "global_step" and isinstance(meta[name], bool)
            ):
                allowed = " or ".join(t.__name__ for t in types)
                found = type(meta.get(name)).__name__ if name in meta else "missing"
                raise damaged(path, f"field {name!r} is {found}, expected {allowed}")
    if not isinstance(meta["config"].get("model_type"), str):
        raise damaged(path, "config has no model_type")
    try:
        NestingSpace.from_dict(meta["space"])
    except (ValueError, TypeError) as err:
        raise damaged(path, f"space: {err}") from None
