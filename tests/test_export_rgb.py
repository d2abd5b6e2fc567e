"""A 1-channel image model (digits) exports for RGB input by default, so that transformers' pipeline(), which
converts every image to RGB, classifies with the sub-model's own logits; --grey keeps the 1-channel input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli_tools import call
from test_eval import make_checkpoint
from tiny import STAGE_BUILDERS, build

from sortednet.cli import export
from sortednet.cli.export import grey_to_rgb

SUB = "depth=2,heads=2,ffn=0.5"


@pytest.mark.parametrize("name", ["vit", "deit", "resnet", "convnext", "swin"])
def test_grey_to_rgb_gives_the_same_logits_on_grey_images_as_rgb(name):
    model = (STAGE_BUILDERS[name]() if name in STAGE_BUILDERS else build(name)).eval()
    size = getattr(model.config, "image_size", 32)
    grey = torch.randn(3, 1, size, size)
    with torch.no_grad():
        want = model(pixel_values=grey).logits
        grey_to_rgb(model)
        got = model(pixel_values=grey.repeat(1, 3, 1, 1)).logits
    assert model.config.num_channels == 3
    assert (got - want).abs().max().item() <= 1e-5


def digit_images(n: int = 4) -> tuple[np.ndarray, torch.Tensor]:
    from sklearn.datasets import load_digits

    images = (load_digits().images[:n] * 255 / 16).round().astype(np.uint8)
    pixels = (torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255 - 0.5) / 0.5
    return images, pixels


def test_the_default_export_runs_in_pipeline_and_grey_keeps_one_channel(tmp_path, capsys):
    from transformers import pipeline

    ckpt = tmp_path / "vit.safetensors"
    nested = make_checkpoint(ckpt)
    assert call(export.main, ckpt, "--subnet", SUB, "--out", tmp_path / "rgb") == 0
    assert call(export.main, ckpt, "--subnet", SUB, "--out", tmp_path / "grey", "--grey") == 0
    printed = capsys.readouterr().out
    assert "1-channel model exported for RGB input" in printed and "--grey: a 1-channel model" in printed
    assert json.loads((tmp_path / "rgb" / "config.json").read_text())["num_channels"] == 3
    assert json.loads((tmp_path / "grey" / "config.json").read_text())["num_channels"] == 1
    assert json.loads((tmp_path / "rgb" / "sortednet.json").read_text())["rgb_from_grey"] is True

    images, pixels = digit_images()
    with torch.no_grad(), nested.use(SUB):
        want = torch.softmax(nested(pixel_values=pixels).logits, -1)
    classify = pipeline("image-classification", model=str(tmp_path / "rgb"), device="cpu")
    labels = nested.model.config.id2label
    for image, probs in zip(images, want, strict=True):
        top = classify(Image.fromarray(image, mode="L"), top_k=1)[0]
        assert top["label"] == labels[int(probs.argmax())]
        assert abs(top["score"] - float(probs.max())) <= 1e-5
    with pytest.raises(ValueError):  # what the issue saw: a 1-channel export in pipeline()
        pipeline("image-classification", model=str(tmp_path / "grey"), device="cpu")(
            Image.fromarray(images[0], mode="L")
        )


def test_rgb_on_a_text_model_is_refused(tmp_path, capsys):
    import sortednet as sn

    path = tmp_path / "llama.safetensors"
    sn.nest(build("llama"), {"depth": [2, 4]}).save(path)
    assert call(export.main, path, "--subnet", "depth=2", "--out", tmp_path / "x", "--rgb") == 2
    assert "--rgb is for 1-channel image models; LlamaForCausalLM takes" in capsys.readouterr().err
    assert call(export.main, path, "--subnet", "depth=2", "--out", tmp_path / "x") == 0
