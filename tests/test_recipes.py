"""Every recipe composes with the real config tree and trains two steps with tiny overrides."""

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import sortednet as sn
from sortednet.cli.train import CONF_DIR, run
from sortednet.train.models import offline_model_path

RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
COMMON = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=2",
    "callbacks.checkpoint.every_n_train_steps=2",
    "callbacks.progress=null",
    "eval_table.max_batches=2",
]
TINY_LLAMA = [
    "model.pretrained=null",
    "+model.config.model_type=llama",
    "+model.config.hidden_size=32",
    "+model.config.num_hidden_layers=2",
    "+model.config.num_attention_heads=4",
    "+model.config.num_key_value_heads=2",
    "+model.config.intermediate_size=64",
]
TINY_BERT = [
    "model.pretrained=null",
    "+model.config.model_type=bert",
    "+model.config.hidden_size=32",
    "+model.config.num_hidden_layers=12",
    "+model.config.num_attention_heads=4",
    "+model.config.intermediate_size=64",
    "+model.config.vocab_size=30522",
]


def hub_free_overrides(name: str, tmp_path: Path) -> list[str]:
    """The full-scale recipes need the HF Hub: swap in a tiny model and local files, keep everything else."""
    if name == "sortednet_bert_glue":
        for split, n in (("train", 64), ("validation", 16)):
            with open(tmp_path / f"{split}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["sentence", "label"])
                writer.writerows(
                    [[f"a {'good' if i % 2 else 'bad'} film number {i}", i % 2] for i in range(n)]
                )
        files = f"{{train:{tmp_path}/train.csv,validation:{tmp_path}/validation.csv}}"
        return [
            "trainer=cpu",
            *TINY_BERT,
            "data.dataset=null",
            f"data.data_files={files}",
            f"data.tokenizer={offline_model_path('all-MiniLM-L6-v2')}",
            "data.batch_size=8",
        ]
    if name == "matformer_llama":
        (tmp_path / "corpus.txt").write_text("Now is the winter of our discontent\n" * 200)
        return [
            "trainer=cpu",
            *TINY_LLAMA,
            "data.tokenizer=char",
            "data.dataset=null",
            f"data.data_files={tmp_path}/corpus.txt",
            "data.block_size=32",
            "data.batch_size=4",
            "train.accumulate=2",
        ]
    if name in ("snnet_digits", "snnetv2_digits"):
        return ["stitch.pretrain_steps=2"]
    if name in (
        "snnet_deit",
        "snnetv2_deit",
    ):  # tiny ViT anchors of two or three widths from a config, on digits
        config = "{model_type:vit,hidden_size:%d,num_hidden_layers:3,num_attention_heads:2,intermediate_size:32,patch_size:2}"
        widths = (("ti", 16), ("s", 24), ("b", 32)) if name == "snnet_deit" else (("s", 16), ("b", 32))
        anchors = [(n, config % h) for n, h in widths]
        out = [
            "trainer=cpu",
            "data.dataset=digits",
            "data.processor=null",
            "data.image_size=null",
            "data.val_split=null",
            "data.num_workers=0",
            "data.batch_size=18",  # snnet_deit: 6 images x 3 repeats
            "stitch.calibration_batches=1",
            *(f"stitch.anchors.{n}.pretrained=null" for n, _ in anchors),
            *(f"+stitch.anchors.{n}.config={c}" for n, c in anchors),
        ]
        if name == "snnet_deit":  # the RegNet teacher: a tiny one saved here, of the digits' 10 classes
            import transformers as T

            config = T.RegNetConfig(
                num_channels=1,
                embedding_size=8,
                hidden_sizes=[8, 16],
                depths=[1, 1],
                groups_width=8,
                num_labels=10,
            )
            T.RegNetForImageClassification(config).save_pretrained(tmp_path / "regnet")
            out.append(f"train.distill.teacher={tmp_path}/regnet")
        return out
    if name == "shakespeare_gpt2":
        return ["data.max_chars=200000", "data.batch_size=8"]
    if name == "minilm_nested":
        return ["data.batch_size=8", "data.max_length=64", "train.distill.teacher_steps=2"]
    if name == "usnet_cifar10":  # digits in place of the Hub's CIFAR-10, a narrow ResNet, the CPU
        return [
            "trainer=cpu",
            "data.dataset=digits",
            "data.val_split=null",
            "data.image_size=16",
            "data.batch_size=16",
            "data.num_workers=0",
            "model.config.embedding_size=16",
            "model.config.hidden_sizes=[16,32,64,128]",
            "eval_table.calibration_batches=2",
        ]
    if name == "slimmable_resnet_digits":
        return ["eval_table.calibration_batches=2"]
    return []


def compose_recipe(name: str, overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"experiment={name}", *overrides])


def test_every_recipe_is_listed():
    assert RECIPES == [
        "digits_vit",
        "maestro_digits",
        "matformer_llama",
        "minilm_nested",
        "shakespeare_gpt2",
        "slimmable_resnet_digits",
        "snnet_deit",
        "snnet_digits",
        "snnetv2_deit",
        "snnetv2_digits",
        "sortednet_bert_glue",
        "swin_digits",
        "usnet_cifar10",
    ]
    for name in RECIPES:
        head = (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[:3]
        assert head[0] == "# @package _global_" and head[1].startswith(
            f"# Launch: sortednet-train experiment={name}"
        )
        assert head[2].startswith("# ") and len(head[2]) <= 100  # the one-line summary --list prints


SLOW = {
    "snnet_digits",
    "snnetv2_digits",
}  # 6-block anchors, 32-35 members tabled: ~30 s; their modes run fast
# in snnet_deit / snnetv2_deit


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in RECIPES]
)
def test_recipe_composes_and_trains_two_steps(name, tmp_path):
    cfg = compose_recipe(name, [f"run_dir={tmp_path}/run", *COMMON, *hub_free_overrides(name, tmp_path)])
    assert cfg.name == name
    rows = run(cfg)
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    path = run_dir / "checkpoints" / "last.safetensors"
    meta = sn.read_metadata(path)
    assert meta["global_step"] == 2 and meta["train_config"]["name"] == name
    assert [r["subnet"] for r in meta["eval_table"]] == [r["subnet"] for r in rows]
    assert (run_dir / "table.csv").is_file() and (run_dir / "table.md").is_file()
    nested = sn.load(path)
    if name.startswith("snnet_"):
        assert isinstance(nested, sn.StitchedModel) and meta["kind"] == "stitched"
    if cfg.data.get("tokenizer") == "char":  # export needs the run's vocabulary: it travels in the file
        assert len(meta["char_vocab"]) == nested.model.config.vocab_size
    assert len(rows) == min(len(nested.space), 64)
    assert rows[0]["params"] <= rows[-1]["params"]


@pytest.mark.parametrize(
    "overrides, layers, distill",
    [
        (
            ["train.distill.teacher=null", "train.distill.teacher_steps=0", "nesting.depth_order=prefix"],
            "depth=k keeps the first k layers (nesting.depth_order=prefix)",
            "in place from the largest member",
        ),
        (
            [
                "nesting.depth_order=influence",
                "train.distill.teacher=finetune",
                "train.distill.teacher_steps=50",
            ],
            "depth=k keeps the k first of nesting.depth_order=influence, in their original order",
            "from the full model fine-tuned alone first for 50 steps, frozen",
        ),
    ],
)
def test_the_check_summary_says_which_layers_depth_keeps_and_the_teacher(overrides, layers, distill):
    from sortednet.train.config import check

    summary = dict(check(compose_recipe("minilm_nested", overrides)).summary())
    assert summary["layers"] == layers
    assert summary["distill"].startswith(distill)
    assert "layers" not in dict(check(compose_recipe("snnet_digits", [])).summary())
