"""Image classification: scikit-learn digits (offline, 8x8), hub datasets, or a local image folder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sortednet.data.augment import Augment, augment_seed
from sortednet.data.common import (
    BaseDataModule,
    TensorDictDataset,
    check_columns,
    check_fraction,
    label_maps,
    load_named,
    pick_split,
)


class ImageTransform:
    """Batch transform for a `datasets.Dataset`: PIL images -> pixel_values [C, H, W] in [-1, 1], or via a processor."""

    def __init__(
        self, image_column: str, label_column: str, image_size: int, mode: str, processor: Any
    ) -> None:
        self.image_column, self.label_column = image_column, label_column
        self.image_size, self.mode, self.processor = image_size, mode, processor

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        images = [im.convert(self.mode) for im in batch[self.image_column]]
        if self.processor is not None:
            pixels = self.processor(images, return_tensors="pt")["pixel_values"]
        else:
            arrays = [
                np.asarray(im.resize((self.image_size, self.image_size)), dtype=np.float32) for im in images
            ]
            pixels = torch.from_numpy(np.stack(arrays)).reshape(
                len(images), self.image_size, self.image_size, -1
            )
            pixels = (pixels.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
        return {"pixel_values": list(pixels), "labels": [int(v) for v in batch[self.label_column]]}


class ImageClassificationDataModule(BaseDataModule):
    """Batches {"pixel_values": float [B, C, H, W], "labels": long [B]}.

    `dataset="digits"`: scikit-learn's 1,797 8x8 digit images (values 0..16 mapped to [-1, 1]), resized to
    `image_size` if given, stratified seeded split by `val_fraction`. Any other `dataset`: an existing local folder
    is read with the "imagefolder" builder, else `datasets.load_dataset(dataset)`; images are converted by
    `AutoImageProcessor.from_pretrained(processor)` if given, else resized to `image_size` (default: the first
    image's width) and mapped to [-1, 1]. Validation: `val_split` if given, else `val_fraction` of `train_split`.
    """

    task = "image_classification"

    def __init__(
        self,
        dataset: str = "digits",
        image_size: int | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        image_column: str = "image",
        label_column: str = "label",
        train_split: str = "train",
        val_split: str | None = None,
        processor: str | None = None,
        augment: Augment | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed)
        self.augment = Augment.make(augment)
        if self.augment is not None and self.batch_size % self.augment.repeats:
            raise ValueError(
                f"data.augment.repeats={self.augment.repeats} does not divide data.batch_size={self.batch_size}; "
                "allowed: a divisor of the batch size"
            )
        self.dataset, self.image_size, self.processor = dataset, image_size, processor
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.image_column, self.label_column = image_column, label_column
        self.train_split, self.val_split = train_split, val_split
        self.label_names: list[str] = []
        self.num_channels = 0
        self.mean: list[float] = []  # the normalisation of pixel_values (augmentation works on [0, 1] values)
        self.std: list[float] = []

    def _load(self) -> Any:
        if Path(self.dataset).is_dir():
            return load_named("imagefolder", data_dir=self.dataset, shown=self.dataset)
        return load_named(self.dataset, builtins=["digits"])

    def prepare_data(self) -> None:
        if self.dataset == "digits":
            return
        self._load()
        if self.processor is not None:
            from transformers import AutoImageProcessor

            AutoImageProcessor.from_pretrained(self.processor)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.dataset == "digits":
            self._setup_digits()
        else:
            self._setup_hf()

    def _setup_digits(self) -> None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1)
        x = (x / 16.0 - 0.5) / 0.5
        size = self.image_size or 8
        if size != 8:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        y = torch.tensor(digits.target, dtype=torch.long)
        idx = np.arange(len(y))
        train_idx, val_idx = train_test_split(
            idx, test_size=self.val_fraction, stratify=digits.target, random_state=self.seed
        )
        train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
        self.train_set = TensorDictDataset({"pixel_values": x[train_idx], "labels": y[train_idx]})
        self.val_set = TensorDictDataset({"pixel_values": x[val_idx], "labels": y[val_idx]})
        self.label_names = [str(int(n)) for n in digits.target_names]
        self.num_channels, self.image_size = 1, size
        self.mean, self.std = [0.5], [0.5]

    def _setup_hf(self) -> None:
        dsd = self._load()
        train = pick_split(dsd, self.train_split, "train_split")
        check_columns("image_column", [self.image_column], train.column_names)
        check_columns("label_column", [self.label_column], train.column_names)
        if self.val_split is not None:
            val = pick_split(dsd, self.val_split, "val_split")
        else:
            stratify = self.label_column if hasattr(train.features[self.label_column], "names") else None
            parts = train.train_test_split(
                test_size=self.val_fraction, seed=self.seed, stratify_by_column=stratify
            )
            train, val = parts["train"], parts["test"]
        names = getattr(train.features[self.label_column], "names", None)
        if names is None:
            if not all(isinstance(v, int) for v in train.unique(self.label_column)):
                raise ValueError(
                    f"label_column: {self.label_column!r} must hold class ids or be a ClassLabel"
                )
            names = [str(i) for i in range(max(train.unique(self.label_column)) + 1)]
        self.label_names = list(names)

        first = train[0][self.image_column]
        mode = "L" if first.mode in ("L", "1", "I", "I;16", "F") else "RGB"
        processor = None
        if self.processor is not None:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(self.processor)
            mode = "RGB"
        transform = ImageTransform(
            self.image_column, self.label_column, self.image_size or first.width, mode, processor
        )
        cols = [self.image_column, self.label_column]
        self.train_set = train.select_columns(cols).with_transform(transform)
        self.val_set = val.select_columns(cols).with_transform(transform)
        pixels = self.train_set[0]["pixel_values"]
        self.num_channels, self.image_size = int(pixels.shape[0]), int(pixels.shape[-1])
        if processor is not None:
            self.mean, self.std = list(processor.image_mean), list(processor.image_std)
        else:
            self.mean, self.std = [0.5] * self.num_channels, [0.5] * self.num_channels

    def train_batch_size(self) -> int:
        return self.batch_size // (self.augment.repeats if self.augment else 1)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Training batches augmented on their device (Lightning calls this after the transfer); a function of
        (seed, step, micro-batch, rank)."""
        trainer = self.trainer
        if self.augment is None or trainer is None or not trainer.training:
            return batch
        micro = getattr(trainer.lightning_module, "micro", 0)
        seed = augment_seed(self.seed, trainer.global_step, micro, trainer.global_rank)
        return self.augment(batch, len(self.label_names), self.mean, self.std, seed)

    def model_kwargs(self) -> dict[str, Any]:
        if not self.label_names:
            raise RuntimeError("ImageClassificationDataModule: call setup('fit') before model_kwargs()")
        return {
            **label_maps(self.label_names),
            "num_channels": self.num_channels,
            "image_size": self.image_size,
        }
