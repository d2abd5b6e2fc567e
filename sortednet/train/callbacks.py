"""Callbacks: the one-file safetensors checkpoint beside every Lightning .ckpt, committed as a pair."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from .checkpoint_io import one_file_path, save_pair

# Lightning warns that manual optimization checkpoints hold the post-step state: that is the state we want
# (it is saved right after an optimizer step, with no gradients pending).
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def data_metadata(datamodule: object) -> dict[str, str]:
    """What the one-file checkpoint must carry of the data for export: a character tokenizer's vocabulary."""
    chars = getattr(getattr(datamodule, "tokenizer", None), "chars", None)
    return {"char_vocab": chars} if isinstance(chars, str) else {}


class NestedCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint (.ckpt: weights, optimizer, scheduler, sampler, loop state for exact resume) that also
    writes the nested model's one-file `.safetensors` beside each .ckpt, with the run's config in its metadata;
    the two are committed together (checkpoint_io.save_pair)."""

    def __init__(self, run_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        # a resume overwrites last.* (a pair committed atomically), never writes last-v1.*: Lightning adds a
        # version when a file of that name exists that it did not save itself in this run
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(**kwargs)
        self.run_config = dict(run_config or {})

    def metadata(self, trainer: L.Trainer) -> dict[str, Any]:
        return {
            "train_config": self.run_config,
            "global_step": trainer.global_step,
            **data_metadata(trainer.datamodule),
        }

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        save_pair(trainer, filepath, self.metadata(trainer))
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(weakref.proxy(self))

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            one_file_path(filepath).unlink(missing_ok=True)
