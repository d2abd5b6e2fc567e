"""Pieces shared by the data modules: the base class, dataset loading with clear errors, small datasets."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from sortednet.checks import number
from sortednet.data.loader import ResumableDataLoader, eval_loader

_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".md": "text",
}


def check_fraction(name: str, value: float) -> float:
    if not 0 < value < 1:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {value!r}")
    return float(value)


def plain_files(data_files: Any) -> str | list[str] | dict[str, str | list[str]]:
    """data_files as plain Python values (Hydra passes DictConfig / ListConfig)."""
    if isinstance(data_files, str | os.PathLike):
        return str(data_files)
    if isinstance(data_files, Mapping):
        return {str(k): plain_files(v) for k, v in data_files.items()}  # type: ignore[misc]
    return [str(f) for f in data_files]


def _flat(data_files: str | list[str] | dict[str, Any]) -> list[str]:
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _flat(v)]
    return list(data_files)


def load_files(data_files: Any) -> Any:
    """`datasets.load_dataset(<format>, data_files=...)`, the format taken from the first file's extension."""
    import datasets

    data_files = plain_files(data_files)
    files = _flat(data_files)
    if not files:
        raise ValueError("data_files is empty")
    for f in files:
        if not Path(f).exists():
            raise ValueError(f"data_files: file {f!r} does not exist")
    ext = Path(files[0]).suffix.lower()
    if ext not in _FORMATS:
        raise ValueError(
            f"data_files: cannot tell the format of {files[0]!r}; allowed extensions: {sorted(_FORMATS)}"
        )
    kwargs = {"delimiter": "\t"} if ext == ".tsv" else {}
    return datasets.load_dataset(_FORMATS[ext], data_files=data_files, **kwargs)


def load_named(
    name: str,
    config: str | None = None,
    builtins: Sequence[str] = (),
    shown: str | None = None,
    **kwargs: Any,
) -> Any:
    """`datasets.load_dataset(name, config)` (a hub name or a local path), failures as one-line ValueErrors.

    `shown` is the user's value for the message (default `name`), `builtins` the builtin names to suggest.
    """
    import datasets

    shown = name if shown is None else shown
    try:
        return datasets.load_dataset(name, config, **kwargs)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        hint = "" if Path(shown).exists() else ", and it is not a local path"
        allowed = f"; builtin datasets: {list(builtins)}" if builtins else ""
        raise ValueError(
            f"dataset {shown!r} could not be loaded (offline? misspelt? not on the Hugging Face Hub{hint}): "
            f"{type(e).__name__}: {first}{allowed}"
        ) from e


def check_columns(arg: str, wanted: Sequence[str], columns: Sequence[str]) -> None:
    for col in wanted:
        if col not in columns:
            raise ValueError(
                f"{arg}: column {col!r} is not in the dataset; available columns: {list(columns)}"
            )


def pick_split(dsd: Any, name: str | None, arg: str) -> Any:
    if name not in dsd:
        raise ValueError(f"{arg}: split {name!r} not found; available splits: {list(dsd)}")
    return dsd[name]


class TensorDictDataset(Dataset):
    """Rows of a dict of equally long tensors; items are dicts of the rows' tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors of unequal lengths: { {k: len(t) for k, t in tensors.items()} }")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: t[i] for k, t in self.tensors.items()}


class BaseDataModule(L.LightningDataModule):
    """Batch sizes, seed, workers and the two loaders; subclasses set `train_set`, `val_set`, `collate_fn`."""

    task: str = ""

    def __init__(self, batch_size: int, eval_batch_size: int | None, num_workers: int, seed: int) -> None:
        super().__init__()
        self.batch_size = number("data.batch_size", batch_size, int, low=1)
        self.eval_batch_size = number("data.eval_batch_size", eval_batch_size or batch_size, int, low=1)
        self.num_workers = number("data.num_workers", num_workers, int, low=0)
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.collate_fn: Callable[[list[Any]], dict[str, torch.Tensor]] | None = None

    def _require_setup(self) -> tuple[Dataset, Dataset]:
        if self.train_set is None or self.val_set is None:
            raise RuntimeError(f"{type(self).__name__}: call setup('fit') first")
        return self.train_set, self.val_set

    def train_batch_size(self) -> int:
        """Examples the training loader reads per batch (fewer than `batch_size` under repeated augmentation)."""
        return self.batch_size

    def train_dataloader(self) -> ResumableDataLoader:
        train, _ = self._require_setup()
        if len(train) < self.train_batch_size():  # type: ignore[arg-type]
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the training set ({len(train)} examples) and "  # type: ignore[arg-type]
                "the last partial batch is dropped"
            )
        return ResumableDataLoader(
            train,
            batch_size=self.train_batch_size(),
            shuffle=True,
            seed=self.seed,
            drop_last=True,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        _, val = self._require_setup()
        return eval_loader(
            val, self.eval_batch_size, collate_fn=self.collate_fn, num_workers=self.num_workers
        )

    def model_kwargs(self) -> dict[str, Any]:
        raise NotImplementedError


def label_maps(names: Sequence[str]) -> dict[str, Any]:
    names = list(names)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
