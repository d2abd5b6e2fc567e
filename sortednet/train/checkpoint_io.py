"""Checkpoints that survive kill -9: every file written atomically, and the `.ckpt` (training state) and
`.safetensors` (every sub-model) of one step committed as a pair.

A pair is written as `NAME.ckpt.staged` then `NAME.safetensors.staged` (each complete or absent: atomic writes),
then committed by renaming the `.ckpt` first (the commit point) and the `.safetensors` second. After a crash:
- `NAME.ckpt.staged` exists: the pair was never committed; both staged files are dropped (the older pair stands);
- only `NAME.safetensors.staged` exists: the `.ckpt` was committed; the `.safetensors` rename is completed.
`recover` applies these rules at the start of a run, so the newer file never stands beside an older partner.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..atomic import atomic_write, fsync_dir, remove_partials
from .divergence import Diverged

STAGED = ".staged"


def staged(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + STAGED)


def one_file_path(ckpt_path: str | os.PathLike) -> Path:
    """The `.safetensors` partner of a `.ckpt`."""
    return Path(ckpt_path).with_suffix(".safetensors")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save, to a temporary file in the checkpoint's own folder, fsynced, then renamed (Lightning's
    own writes through the system temporary folder: across filesystems that is a copy, and a kill leaves a 0-byte
    file)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def save_pair(trainer: Any, ckpt_path: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Write and commit `ckpt_path` and its `.safetensors` partner; called by every rank (under FSDP the shards
    are gathered), rank 0 writes."""
    from .fsdp import save_one_file

    ckpt_path = Path(ckpt_path)
    try:
        trainer.save_checkpoint(staged(ckpt_path), weights_only=False)  # the whole training state, said
        save_one_file(trainer.lightning_module.nested, staged(one_file_path(ckpt_path)), metadata)
    except BaseException:  # a full disk, a kill: the committed pair stands, the staged half goes
        if trainer.is_global_zero:
            staged(ckpt_path).unlink(missing_ok=True)
        raise
    problem = diverged_weights(staged(one_file_path(ckpt_path))) if trainer.is_global_zero else None
    problem = trainer.strategy.broadcast(problem, src=0)
    if problem:  # never saved: the last pair stays the last good one
        if trainer.is_global_zero:
            staged(ckpt_path).unlink(missing_ok=True)
            staged(one_file_path(ckpt_path)).unlink(missing_ok=True)
        raise Diverged(
            f"training diverged at step {trainer.global_step}: {problem}; this checkpoint was not saved and the "
            "last saved one is kept as it was; lower optim.lr, raise optim.warmup_steps or set train.grad_clip"
        )
    if trainer.is_global_zero:
        commit(ckpt_path)
    trainer.strategy.barrier()


def diverged_weights(one_file: Path) -> str | None:
    """What is wrong with the weights a (staged) one-file checkpoint holds, as its writer found them, or None."""
    from ..checkpoint import HUGE, read_metadata

    meta = read_metadata(one_file)
    for key, what in (("nonfinite", "NaN or inf"), ("huge", f"a magnitude over {HUGE:g}")):
        names = meta.get(key) or []
        if names:
            shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
            return f"{len(names)} weight tensors hold {what} ({shown})"
    return None


def commit(ckpt_path: Path) -> None:
    os.replace(staged(ckpt_path), ckpt_path)  # the commit point
    os.replace(staged(one_file_path(ckpt_path)), one_file_path(ckpt_path))
    fsync_dir(ckpt_path.parent)


def recover(folder: str | os.PathLike) -> list[str]:
    """Finish or drop what a killed run left in its checkpoints folder; returns what was done, for the log."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = [f"removed the partial file {p.name}" for p in remove_partials(folder)]
    for ckpt in folder.glob(f"*.ckpt{STAGED}"):
        partner = staged(one_file_path(ckpt.with_name(ckpt.name.removesuffix(STAGED))))
        ckpt.unlink()
        partner.unlink(missing_ok=True)
        done.append(f"dropped the uncommitted checkpoint {ckpt.name}")
    for one in folder.glob(f"*.safetensors{STAGED}"):
        final = one.with_name(one.name.removesuffix(STAGED))
        os.replace(one, final)
        done.append(f"completed the checkpoint {final.name}")
    if done:
        fsync_dir(folder)
    return done


def check_resume(path: str | os.PathLike, space: Mapping[str, Any]) -> None:
    """Everything about `ckpt_path=` that can be known before training: it exists, is a Lightning checkpoint
    that sortednet wrote (read without unpickling code), matches the configured nesting space, and its
    `.safetensors` partner is of the same step. One-line ValueErrors."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"ckpt_path={str(path)!r} does not exist; give the run's checkpoints/last.ckpt")
    if path.suffix == ".safetensors":
        raise ValueError(
            f"ckpt_path={str(path)!r} is the one-file model checkpoint; resuming needs the training state beside "
            f"it: {str(path.with_suffix('.ckpt'))!r}"
        )
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise ValueError(
            f"ckpt_path={str(path)!r} is not a Lightning checkpoint (empty, truncated or another format)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        line = " ".join(str(err).split())[:200]
        raise ValueError(f"ckpt_path={str(path)!r} cannot be read as a checkpoint: {line}") from None
    own = state.get("sortednet") if isinstance(state, dict) else None
    if not isinstance(own, dict):
        raise ValueError(f"ckpt_path={str(path)!r} was not written by sortednet-train (no sortednet state)")
    if own.get("space") != dict(space):
        raise ValueError(
            f"ckpt_path={str(path)!r} trained the nesting space {own.get('space')}, the config gives "
            f"{dict(space)}; resume with the run's own nesting config"
        )
    partner = one_file_path(path)
    if partner.is_file():
        from ..checkpoint import read_metadata

        step = read_metadata(partner).get("global_step")
        if step is not None and step != state.get("global_step"):
            raise ValueError(
                f"ckpt_path={str(path)!r} is of step {state.get('global_step')} but its partner {partner.name} "
                f"is of step {step}: the pair was written by two different runs or copied apart"
            )
