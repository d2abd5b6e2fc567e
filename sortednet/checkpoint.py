"""One-file checkpoint: every weight once in a safetensors file, the rest as JSON in its header.

`load_submodel` reads only the bytes of one sub-model (safetensors slices over a memory map).
Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import hf
from .atomic import atomic_write
from .families import AnyFamily, family_for, family_from_dict, registered

FORMAT = "sortednet"
VERSION = 1


def write(path: str | os.PathLike, state: Mapping[str, torch.Tensor], header: Mapping[str, Any]) -> None:
    """Write `state` (original-model keys) once per tensor, with `header` as JSON metadata; atomic. Tied
    tensors are written once (the other keys in `aliases`); tensors holding NaN or inf are listed in
    `nonfinite` (sortednet-select and -export refuse such a checkpoint)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, tuple[int, ...]], str] = {}
    for key, tensor in state.items():
        ident = (
            tensor.untyped_storage().data_ptr() + tensor.storage_offset() * tensor.element_size(),
            tuple(tensor.shape),
        )
        if ident in seen:  # tied weights (e.g. GPT-2's lm_head and wte) are written once
            aliases[key] = seen[ident]
            continue
        seen[ident] = key
        tensors[key] = tensor.detach().contiguous()
    nonfinite, huge = absurd(tensors)
    full = {
        "format": FORMAT,
        "version": VERSION,
        **header,
        "aliases": aliases,
        "nonfinite": nonfinite,
        "huge": huge,
    }
    meta = {"format": "pt", FORMAT: json.dumps(full, default=str)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


HUGE = (
    1e6  # a weight of larger magnitude is absurd: no trained transformer holds one (fp16's largest is 65504)
)


def absurd(tensors: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """(the float tensors holding NaN or inf, those holding a finite value of magnitude > HUGE): a diverged run's
    weights, which sortednet-select and -export refuse and sortednet-train never saves."""
    nonfinite, huge = [], []
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and tensor.numel():
            top = float(tensor.detach().abs().amax())
            if top != top or top == float("inf"):
                nonfinite.append(key)
            elif top > HUGE:
                huge.append(key)
    return nonfinite, huge


# header fields the format owns (the rest is what the run added: train config, eval table, ...)
OWN_KEYS = {
    "format",
    "kind",
    "version",
    "model_class",
    "config",
    "space",
    "family",
    "aliases",
    "low_rank",
    "options",
    "nonfinite",
    "huge",
    "bn_calibrated",
    "_keys",
}


def resolve(path: str | os.PathLike) -> Path:
    """A run folder means its `checkpoints/last.safetensors`; a file is taken as it is. One-line errors for a
    missing path, a folder without a checkpoint and a Lightning `.ckpt` (training state, not the model file)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.safetensors"
        if not candidate.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is a folder without checkpoints/last.safetensors; "
                "give a run folder or a .safetensors file"
            )
        return candidate
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".ckpt" and not is_lightning_checkpoint(path):
        raise ValueError(
            f"{str(path)!r} is not a checkpoint ({path.stat().st_size} bytes, not a Lightning zip archive: empty, "
            "truncated or another format); give a sortednet .safetensors file or a run folder"
        )
    if path.suffix == ".ckpt":
        raise ValueError(
            f"{str(path)!r} is a Lightning training checkpoint (for resuming with ckpt_path=); give its "
            f"one-file partner {str(path.with_suffix('.safetensors'))!r} or the run folder"
        )
    return path


def is_lightning_checkpoint(path: Path) -> bool:
    """A `.ckpt` that torch.save wrote: a zip archive, not empty."""
    return path.stat().st_size > 0 and zipfile.is_zipfile(path)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a sortednet checkpoint (a file or a run folder); a clear one-line error for anything
    else (not safetensors, not sortednet's, another format version, truncated). The fields each kind of model
    needs are checked by that kind (`sortednet.read_metadata` does both)."""
    path = resolve(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(FORMAT)
            keys = set(f.keys())
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise ValueError(
            f"checkpoint {str(path)!r} is not a readable safetensors file (truncated or corrupt): {err}"
        ) from None
    if raw is None:
        raise ValueError(
            f"checkpoint {str(path)!r} is a safetensors file that sortednet did not write (no {FORMAT!r} metadata)"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"checkpoint {str(path)!r} has a damaged header: its metadata is not JSON ({err})"
        ) from None
    if not isinstance(meta, dict) or meta.get("version") != VERSION:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise ValueError(
            f"checkpoint {str(path)!r} has sortednet format version {version}; this sortednet reads {VERSION}"
        )
    meta["_keys"] = keys
    _check_size(path, keys)
    return meta


def _raw_header(path: Path) -> tuple[int, dict[str, Any]]:
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        return header_len, json.loads(f.read(header_len))


def _check_size(path: Path, keys: set[str]) -> None:
    """safetensors maps lazily, so a file cut inside its data only fails when read: check the length now."""
    header_len, header = _raw_header(path)
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size < 8 + header_len + end:
        raise ValueError(
            f"checkpoint {str(path)!r} is truncated: {path.stat().st_size} bytes, its header needs {8 + header_len + end}"
        )


def tensor_problems(
    path: str | os.PathLike, meta: Mapping[str, Any], expected: Mapping[str, torch.Tensor]
) -> list[str]:
    """Where the file's tensors disagree with `expected` (the tensors of the model its header describes, built
    on the meta device): a key missing, another shape, an integer tensor where a float one belongs. Reads the
    header only."""
    _, header = _raw_header(resolve(path))
    aliases = meta.get("aliases") or {}
    problems = []
    for key, tensor in expected.items():
        stored = header.get(aliases.get(key, key))
        if stored is None:
            problems.append(f"tensor {key!r} is missing")
            continue
        shape, dtype = tuple(stored["shape"]), str(stored["dtype"])
        if shape != tuple(tensor.shape):
            problems.append(
                f"tensor {key!r} has shape {list(shape)}, the header's model needs {list(tensor.shape)}"
            )
        elif dtype.startswith(("F", "BF")) != tensor.is_floating_point():
            problems.append(
                f"tensor {key!r} is {dtype}, the header's model needs {str(tensor.dtype).removeprefix('torch.')}"
            )
    return problems


def family_of(meta: Mapping[str, Any]) -> AnyFamily:
    """The family a checkpoint's weights were nested with.

    The header stores it. The registered family for the model type is used when it equals the stored one;
    the stored one when none is registered (a family registered in the process that wrote the file) or when
    the registered one differs (the weights were sliced by the stored one). A file without a stored family
    (written before families were stored) uses the registered one."""
    stored = meta.get("family")
    if stored is None:
        return family_for(hf.config_from_dict(meta["config"]))
    family = family_from_dict(stored)
    held = registered(meta["config"].get("model_type"))
    if held is None:
        return family
    if held == family:
        return held
    warnings.warn(
        f"sortednet: the checkpoint's family {family.name!r} differs from the registered family {held.name!r} "
        f"for model type {meta['config'].get('model_type')!r}; using the checkpoint's, which nested these weights",
        stacklevel=2,
    )
    return family


def run_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What a run added to a checkpoint's header (train config, eval table, ...): the keys the format does not own."""
    return {k: v for k, v in read_metadata(path).items() if k not in OWN_KEYS and k != "bn_calibrated"}


def update_metadata(path: str | os.PathLike, **extra: Any) -> None:
    """Merge `extra` into a sortednet checkpoint's JSON metadata, rewriting only the header: the tensor bytes
    are copied as they are (no model is loaded; the weights stay bit-identical). Atomic (temp file + rename).
    """
    path = resolve(path)
    read_metadata(path)  # a clear error for anything that is not a sortednet checkpoint

    def write(tmp: Path) -> None:
        with open(path, "rb") as src:
            length = int.from_bytes(src.read(8), "little")
            header = json.loads(src.read(length))
            meta = header.setdefault("__metadata__", {})
            own = json.loads(meta[FORMAT])
            own.update(extra)
            meta[FORMAT] = json.dumps(own, default=str)
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as safetensors writes it
            with open(tmp, "wb") as out:
                out.write(len(raw).to_bytes(8, "little"))
                out.write(raw)
                shutil.copyfileobj(src, out, 16 << 20)

    atomic_write(path, write)


def damaged(path: Path, problem: str) -> ValueError:
    return ValueError(f"checkpoint {str(path)!r} has a damaged header: {problem}")
