"""The CLI on a ResNet: bad channel values refused before training; export and eval calibrate BatchNorm
subnets the checkpoint has no statistics for and store them; the recipe's table holds calibrated and
uncalibrated accuracy; and on digits an uncalibrated narrow subnet is worse than the calibrated one."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from hydra import compose, initialize_config_dir
from test_cli_train import QUICK

import sortednet as sn
from sortednet.cli import export
from sortednet.cli.eval import evaluate_checkpoint
from sortednet.cli.train import CONF_DIR, run
from sortednet.data import ImageClassificationDataModule

RECIPE = ["experiment=slimmable_resnet_digits", "sampler=sandwich", "sampler.k=2", "model.bn=batch"]


def config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={tmp_path}/run", *RECIPE, *QUICK, *overrides])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "nesting.channels=[0.01,1.0]",
            r"channels=0.01 leaves the model's narrowest width .* allowed: a fraction >=",
        ),
        ("nesting.channels=[128]", r"channels=128 exceeds the model's 64 channels of the last stage"),
        ("+nesting.ffn=[0.5]", r"dimension 'ffn' cannot be nested for model family 'resnet'"),
        ("model.bn=per_width", r"model.bn='per_width' is unknown; allowed: batch, switchable or null"),
    ],
)
def test_bad_values_are_refused_in_one_line_before_training(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        run(config(tmp_path, override))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sortednet-train: error: ") and "\n" not in err, err
    assert any(__import__("re").search(message, line) for line in [err]), err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_export_and_eval_calibrate_and_store_what_the_checkpoint_lacks(tmp_path):
    run(config(tmp_path))
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    assert not sn.read_metadata(ckpt)["bn_calibrated"]  # eval_table disabled: nothing calibrated yet
    info = export.export_subnet(
        ckpt, "channels=0.5,depth=1", tmp_path / "small", rgb=False
    )  # 1 channel, exact
    assert sn.read_metadata(ckpt)["bn_calibrated"] == ["depth=1,channels=0.5"]
    small = T.ResNetForImageClassification.from_pretrained(tmp_path / "small").eval()
    nested = sn.load(ckpt)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad(), nested.use("channels=0.5,depth=1"):
        assert (small(pixel_values=x).logits - nested(pixel_values=x).logits).abs().max() <= 1e-5
    assert info["params"] == nested.num_params("channels=0.5,depth=1")
    rows, _ = evaluate_checkpoint(
        ckpt, {"subnets": ["channels=0.25,depth=1"], "latency": {"enabled": False}, "progress": False}
    )
    assert len(rows) == 1 and rows[0]["flops"] > 0
    assert len(sn.read_metadata(ckpt)["bn_calibrated"]) == 2


@pytest.mark.slow
def test_uncalibrated_narrow_subnet_is_worse_than_calibrated_on_digits():
    """Shared BatchNorm, sandwich training (largest, smallest and one more subnet per step)."""
    torch.manual_seed(0)
    data = ImageClassificationDataModule("digits", image_size=16, batch_size=32, seed=0)
    data.setup("fit")
    config = T.ResNetConfig(
        num_channels=1,
        num_labels=10,
        layer_type="basic",
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[2, 2, 2],
        downsample_in_first_stage=False,
    )
    nested = sn.nest(T.ResNetForImageClassification(config).train(), "channels=0.25|0.5|1.0,depth=1|2")
    optimizer = torch.optim.AdamW(nested.parameters(), lr=3e-3)
    subnets = nested.space.subnets()
    batches = itertools.cycle(data.train_dataloader())
    for step in range(40):
        batch = next(batches)
        optimizer.zero_grad()
        for subnet in (subnets[-1], subnets[0], subnets[1 + step % (len(subnets) - 2)]):
            with nested.use(subnet):
                F.cross_entropy(nested(pixel_values=batch["pixel_values"]).logits, batch["labels"]).backward()
        optimizer.step()
    narrow = "channels=0.25,depth=1"

    def accuracy() -> float:
        nested.eval()
        right = total = 0
        with torch.no_grad(), nested.use(narrow):
            for batch in data.val_dataloader():
                right += (
                    nested(pixel_values=batch["pixel_values"]).logits.argmax(-1) == batch["labels"]
                ).sum()
                total += len(batch["labels"])
        return float(right) / total

    before = accuracy()
    sn.calibrate(nested, narrow, data.train_dataloader(), batches=10)
    after = accuracy()
    print(f"{narrow}: accuracy uncalibrated {before:.3f}, calibrated {after:.3f}")
    assert after > before + 0.02
