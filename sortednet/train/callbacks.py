"""Callbacks: the one-file safetensors checkpoint beside every Lightning .ckpt."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

# Lightning warns that manual optimization checkpoints hold the post-step state: that is the state we want
# (it is saved right after an optimizer step, with no gradients pending).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def data_metadata(datamodule: object) -> dict[str, str]:
    """What the one-file checkpoint must carry of the data for export: a character tokenizer's vocabulary."""
    chars = getattr(getattr(datamodule, "tokenizer", None), "chars", None)
    return {"char_vocab": chars} if isinstance(chars, str) else {}


def one_file_path(ckpt_path: str | os.PathLike) -> Path:
    return Path(ckpt_path).with_suffix(".safetensors")


class NestedCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint (.ckpt: weights, optimizer, scheduler, sampler, loop state for exact resume) that also
    writes the nested model's one-file `.safetensors` beside each .ckpt, with the run's config in its metadata."""

    def __init__(self, run_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_config = dict(run_config or {})

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        from .fsdp import save_one_file

        super()._save_checkpoint(trainer, filepath)
        metadata = {
            "train_config": self.run_config,
            "global_step": trainer.global_step,
            **data_metadata(trainer.datamodule),
        }
        # every rank: under FSDP the shards are gathered; rank 0 writes
        save_one_file(trainer.lightning_module.nested, one_file_path(filepath), metadata)
        trainer.strategy.barrier()

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            one_file_path(filepath).unlink(missing_ok=True)
