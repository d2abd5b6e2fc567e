"""The progress bar of sortednet-train: Lightning's RichProgressBar, with a description that fits a run bounded by
steps (Lightning's reads `Epoch 27/-2` when `max_epochs=-1`)."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:  # the one method changed: the description
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            return super()._get_train_description(current_epoch)
        text = f"Epoch {current_epoch}" + (f" · {trainer.max_steps} steps" if trainer.max_steps > 0 else "")
        width = len(self.validation_description)
        return f"{text:{width}}" if width > len(text) else text
