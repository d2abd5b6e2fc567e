"""What a resume (`ckpt_path=`) may change: the config is compared with the run config stored beside the
checkpoint (its `.safetensors` partner's `train_config`), key by key, before anything is built.

- Refused (one line): `seed`, `sampler.*` (the subnets each step draws: the checkpoint's sampler state restores
  its own k and seed), `nesting.*` and `model.*` (the weights' shapes, their order), `stitch.*`, `data.*` but its
  loader workers (the restored data-loader position counts batches of the checkpoint's data), `train.rank.*`
  (Maestro's shrinking state is restored), and `optim.head_lr` set or unset (the optimizer's groups differ).
- Applied: `optim.*` (the restored optimizer's learning rates, weight decay, betas and eps, and the scheduler's
  base rates, are set from the config after Lightning restores them: `SortedNetModule.on_train_start`; the
  schedule itself is a function of the config, never stored), the rest of `train.*`, `trainer.*`, `val.*`,
  `eval_table.*`, `callbacks.*`, `logger.*`: what the new run uses, so its checkpoints' `train_config` is true.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checks import shown

REFUSED = {
    "seed": "the subnets each step draws and the data order follow it",
    "sampler": "the checkpoint's sampler state (its k and seed) is restored with it",
    "nesting": "the checkpoint's weights are nested and ordered so",
    "model": "the checkpoint's weights are of that model",
    "stitch": "the checkpoint's weights are of those anchors and stitches",
    "data": "the restored data-loader position counts batches of the checkpoint's data",
    "train.rank": "Maestro's shrinking state is restored with the checkpoint",
}
# values a resume does not use: the loader's workers, and the calibration batches (a resume reads the importance
# and depth orders from its checkpoint instead of measuring them again)
HARMLESS = ("data.num_workers", "data.eval_batch_size", "nesting.reorder_batches")
IGNORED = ("ckpt_path", "run_dir", "resumed", "name")  # what differs by nature, or names only


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(node, default=str))}


def same(old: Any, new: Any) -> bool:
    """Equal values, or one folder at two places (an offline model's package installed elsewhere)."""
    if old == new:
        return True
    paths = isinstance(old, str) and isinstance(new, str) and "/" in old and "/" in new
    return paths and Path(old).parts[-2:] == Path(new).parts[-2:]


def family(key: str) -> str | None:
    return next(
        (f for f in sorted(REFUSED, key=len, reverse=True) if key == f or key.startswith(f + ".")), None
    )


def changes(ckpt_path: str | os.PathLike, given: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, the checkpoint's value, the config's value) for every key a resume changes and applies; a one-line
    ValueError for one it cannot honour. Nothing to compare (no partner, or no stored config): no change."""
    from ..checkpoint import read_metadata
    from .checkpoint_io import one_file_path

    partner = one_file_path(ckpt_path)
    stored = read_metadata(partner).get("train_config") if Path(partner).is_file() else None
    if not isinstance(stored, Mapping):
        return []
    old, new = flat(stored), flat(given)
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k.count("."), k)):  # `seed` before `data.seed`
        if key.split(".")[0] in IGNORED or key in HARMLESS or same(old.get(key), new.get(key)):
            continue
        why = REFUSED.get(family(key) or "")
        if key == "optim.head_lr" and (old.get(key) is None) != (new.get(key) is None):
            why = "the optimizer's parameter groups differ with and without it"
        if why is not None:
            raise ValueError(
                f"ckpt_path={str(ckpt_path)[:100]!r}: {key}={shown(new.get(key))} differs from the checkpoint's "
                f"{shown(old.get(key))}, which a resume cannot change ({why}); allowed: the checkpoint's value "
                "(drop the override)"
            )
        out.append((key, old.get(key), new.get(key)))
    return out
