"""11. Convolutional networks: the nesting tax of a ResNet train step (nested at full size / un-nested), and a
0.5-width subnet's forward under `use()` against its extracted dense model (eval, no_grad), side by side."""

from __future__ import annotations

import torch
import transformers as T

import sortednet as sn

from .common import Result, build, forward_vs_plain, interleaved, train_step

TAX_TARGET = 1.03
FORWARD_TARGET = 1.05
SPACE = sn.NestingSpace(channels=[0.25, 0.5, 0.75, 1.0], depth=[1, 2])


def resnet_config(quick: bool) -> T.ResNetConfig:
    """ResNet-18's layout (basic blocks, 2 per stage) at half width when quick."""
    widths = [32, 64, 128, 256] if quick else [64, 128, 256, 512]
    return T.ResNetConfig(
        layer_type="basic", embedding_size=widths[0], hidden_sizes=widths, depths=[2, 2, 2, 2], num_labels=10
    )


def images(batch: int, size: int, labels: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}
    if labels:
        out["labels"] = torch.randint(0, 10, (batch,), generator=g)
    return out


def shape(config: T.ResNetConfig, batch: dict[str, torch.Tensor]) -> str:
    b, _, h, _ = batch["pixel_values"].shape
    return f"ResNet basic {config.hidden_sizes}x{config.depths}, batch {b} x {h}x{h}"


def nesting_tax(quick: bool) -> Result:
    config = resnet_config(quick)
    plain = build(T.ResNetForImageClassification, config)
    nested = sn.nest(build(T.ResNetForImageClassification, config), SPACE)
    nested.activate(nested.space.largest)
    batch = images(8 if quick else 32, 64 if quick else 112, labels=True)
    repeats, warmup = (6, 1) if quick else (16, 2)
    paired = interleaved(train_step(nested, batch), train_step(plain, batch), repeats, warmup)
    return Result(
        f"nesting tax, train step, {shape(config, batch)}",
        paired.ratio,
        TAX_TARGET,
        detail=paired.describe("nested", "plain"),
        busy=paired.busy,
    )


def subnet_forward(quick: bool) -> Result:
    config = resnet_config(quick)
    nested = sn.nest(build(T.ResNetForImageClassification, config), SPACE).eval()
    subnet = "channels=0.5,depth=2"
    small = nested.extract(subnet).eval()
    batch = images(8 if quick else 32, 64 if quick else 112, labels=False)

    paired = forward_vs_plain(nested, subnet, small, batch, quick)
    return Result(
        f"subnet forward / extracted, {subnet}, {shape(config, batch)}",
        paired.ratio,
        FORWARD_TARGET,
        detail=paired.describe("nested", "extracted"),
        busy=paired.busy,
    )


def run(quick: bool) -> list[Result]:
    return [nesting_tax(quick), subnet_forward(quick)]
