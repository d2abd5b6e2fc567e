"""Swin: blocks per stage and FFN nest (shifted windows included); a sub-model is a plain smaller Swin;
channels and heads are refused in one line; the recipe trains and exports one on digits."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from hydra import compose, initialize_config_dir
from test_cli_train import QUICK
from tiny import STAGE_BUILDERS

import sortednet as sn
from sortednet.cli import export
from sortednet.cli.train import CONF_DIR, run

SPACE = sn.NestingSpace(depth=[1, 2, 3], ffn=[0.25, 0.5, 1.0])


def pixels(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["swin", "swinv2"])
def test_a_subnet_is_a_plain_smaller_swin_and_switching_changes_the_output(tmp_path, name):
    torch.manual_seed(0)
    model = STAGE_BUILDERS[name]().eval()
    cls = type(model)
    x = pixels()
    with torch.no_grad():
        original = model(pixel_values=x).logits
        nested = sn.nest(model, SPACE)
        assert torch.equal(nested(pixel_values=x).logits, original)
        small = nested.extract("depth=1,ffn=0.5")
        assert type(small) is cls
        assert small.config.depths == [1, 1, 1] and small.config.mlp_ratio == 1.0
        block = small.base_model.encoder.layers[2].blocks[0]
        fc1 = next(m for n, m in block.named_modules() if n in ("mlp.fc1", "intermediate.dense"))
        assert fc1.out_features == 64
        assert nested.num_params("depth=1,ffn=0.5") == small.num_parameters()
        small.save_pretrained(tmp_path)
        again = cls.from_pretrained(tmp_path).eval()
        with nested.use("depth=1,ffn=0.5"):
            under_use = nested(pixel_values=x).logits
        assert (under_use - again(pixel_values=x).logits).abs().max() <= 1e-5
        assert (under_use - original).abs().max() > 1e-3
        assert torch.equal(nested(pixel_values=x).logits, original)  # back to the largest


@pytest.mark.parametrize(
    "dim, why",
    [("channels", "fixes each stage's head count"), ("heads", "ties heads to width"), ("rank", "factorised")],
)
def test_dimensions_swin_cannot_nest_are_refused_in_one_line(dim, why):
    with pytest.raises(ValueError) as err:
        sn.nest(STAGE_BUILDERS["swin"](), sn.NestingSpace(**{dim: [0.5, 1.0]}))
    line = str(err.value)
    assert "\n" not in line and why in line
    assert line.startswith(f"dimension {dim!r} cannot be nested for model family 'swin'")
    assert line.endswith("it supports: depth, ffn")


def test_the_cli_trains_and_exports_a_nested_swin_on_digits(tmp_path):
    overrides = [f"run_dir={tmp_path}/run", "experiment=swin_digits", "model.config.embed_dim=16", *QUICK]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        run(compose("train", overrides=overrides))
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    export.export_subnet(ckpt, "depth=1,ffn=0.25", tmp_path / "small", rgb=False)  # 1 channel, exact
    small = T.SwinForImageClassification.from_pretrained(tmp_path / "small").eval()
    assert small.config.depths == [1, 1, 1] and small.config.mlp_ratio == 1.0
    nested = sn.load(ckpt).eval()
    x = pixels(4)
    with torch.no_grad(), nested.use("depth=1,ffn=0.25"):
        diff = (nested(pixel_values=x).logits - small(pixel_values=x).logits).abs().max()
    assert diff <= 1e-5
