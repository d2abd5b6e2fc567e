"""Text classification: hub datasets, local csv/json/parquet files, or the builtin `shakespeare_genre`."""

from __future__ import annotations

from typing import Any

import torch

from sortednet.data.common import (
    BaseDataModule,
    check_columns,
    check_fraction,
    label_maps,
    load_files,
    load_named,
    pick_split,
)

BUILTINS = ("shakespeare_genre",)


class PadCollator:
    """Dynamic padding with the tokenizer; returns a plain dict of tensors."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer.pad(features, padding=True, return_tensors="pt")
        out = {k: torch.as_tensor(v) for k, v in batch.items()}
        out["labels"] = out["labels"].long()
        return out


class TextClassificationDataModule(BaseDataModule):
    """Sequence classification batches: input_ids, attention_mask (token_type_ids), labels [B].

    Source, in this order: `data_files` (local csv/json/jsonl/parquet, {"train": ..., "validation": ...}), the
    builtin `dataset="shakespeare_genre"`, else `datasets.load_dataset(dataset, dataset_config)` (hub or path).
    Integer labels are used as they are; string labels get ids in sorted order. Without a `val_split` in the
    data, `val_fraction` of the training split (seeded) is held out.
    """

    task = "text_classification"

    def __init__(
        self,
        tokenizer: str,
        dataset: str | None = None,
        dataset_config: str | None = None,
        data_files: dict[str, Any] | None = None,
        text_fields: list[str] | tuple[str, ...] | str = ("text",),
        label_field: str = "label",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        train_split: str = "train",
        val_split: str | None = "validation",
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed)
        if dataset is None and data_files is None:
            raise ValueError(
                "dataset: give a dataset name (hub, local path or 'shakespeare_genre') or data_files"
            )
        if data_files is None and dataset == "shakespeare_genre":
            from sortednet.data.shakespeare import plays_dir

            plays_dir()  # the package that ships the plays, before anything slow starts
        self.text_fields = [text_fields] if isinstance(text_fields, str) else list(text_fields)
        if not 1 <= len(self.text_fields) <= 2:
            raise ValueError(f"text_fields must name one or two columns, got {self.text_fields!r}")
        self.tokenizer_name = tokenizer
        self.dataset, self.dataset_config, self.data_files = dataset, dataset_config, data_files
        self.label_field, self.max_length = label_field, max_length
        self.train_split, self.val_split = train_split, val_split
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.cache_dir = cache_dir
        self.tokenizer: Any = None
        self.label_names: list[str] = []

    def _load(self) -> Any:
        if self.data_files is not None:
            return load_files(self.data_files)
        if self.dataset == "shakespeare_genre":
            from sortednet.data.shakespeare import shakespeare_genre_files

            return load_files(shakespeare_genre_files(self.cache_dir))
        return load_named(self.dataset, self.dataset_config, builtins=BUILTINS)  # type: ignore[arg-type]

    def prepare_data(self) -> None:
        from transformers import AutoTokenizer

        self._load()
        AutoTokenizer.from_pretrained(self.tokenizer_name)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from transformers import AutoTokenizer

        dsd = self._load()
        train = pick_split(dsd, self.train_split, "train_split")
        check_columns("text_fields", self.text_fields, train.column_names)
        check_columns("label_field", [self.label_field], train.column_names)
        if self.val_split is not None and self.val_split in dsd:
            val = dsd[self.val_split]
        else:
            parts = train.train_test_split(test_size=self.val_fraction, seed=self.seed)
            train, val = parts["train"], parts["test"]
        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
        to_id = self._label_mapping(train)
        self.train_set = self._encode(train, to_id)
        self.val_set = self._encode(val, to_id)
        self.collate_fn = PadCollator(self.tokenizer)

    def _label_mapping(self, train: Any) -> dict[Any, int] | None:
        feature = train.features[self.label_field]
        names = getattr(feature, "names", None)
        if names is not None:  # a ClassLabel: ids as they are
            self.label_names = list(names)
            return None
        values = train.unique(self.label_field)
        if all(isinstance(v, int) for v in values):
            self.label_names = [str(i) for i in range(max(values) + 1)]
            return None
        self.label_names = sorted(str(v) for v in values)
        return {n: i for i, n in enumerate(self.label_names)}

    def _encode(self, ds: Any, to_id: dict[Any, int] | None) -> Any:
        # locals only (no self) in the closure, so that datasets can fingerprint it and cache the result
        tok, fields, label, n = self.tokenizer, self.text_fields, self.label_field, len(self.label_names)
        max_length = self.max_length

        def encode(batch: dict[str, list]) -> dict[str, list]:
            texts = [batch[f] for f in fields]
            enc = tok(*texts, truncation=True, max_length=max_length)
            if to_id is None:
                labels = [int(v) for v in batch[label]]
            else:
                unknown = {v for v in batch[label] if str(v) not in to_id}
                if unknown:
                    raise ValueError(
                        f"label_field: labels {sorted(unknown)} do not occur in the training split"
                    )
                labels = [to_id[str(v)] for v in batch[label]]
            bad = [v for v in labels if not 0 <= v < n]
            if bad:
                raise ValueError(f"label_field: label ids {sorted(set(bad))} outside 0..{n - 1}")
            return {**enc, "labels": labels}

        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc="tokenizing")

    def model_kwargs(self) -> dict[str, Any]:
        if not self.label_names:
            raise RuntimeError("TextClassificationDataModule: call setup('fit') before model_kwargs()")
        return label_maps(self.label_names)
