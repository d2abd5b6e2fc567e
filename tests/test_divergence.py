"""Divergence is caught before it is saved: one loss spike is skipped, two in a row stop the run before either is
applied, a checkpoint whose weights are NaN, inf or absurd (magnitude over 1e6) is never written, and
sortednet-select and -export refuse absurd weights. The detector never fires on healthy runs."""

from __future__ import annotations

import math
import random

import lightning as L
import pytest
import torch
from test_cli_tools import call
from test_train import SPACE, digits, tiny_vit, trainer

import sortednet as sn
from sortednet.cli import export, select
from sortednet.sampling import make_sampler
from sortednet.train import Classification, SortedNetModule
from sortednet.train.callbacks import NestedCheckpoint
from sortednet.train.checkpoint_io import AtomicCheckpointIO
from sortednet.train.divergence import Diverged, LossWatch


def healthy(kind: str, steps: int = 400, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    out = []
    for step in range(steps):
        if kind == "falling":  # cross-entropy from chance to near zero, noisy, with 4x spikes
            base = 2.3 * math.exp(-step / 40) + 0.01
            out.append(base * rng.uniform(0.5, 1.5) * (4 if rng.random() < 0.03 else 1))
        elif kind == "near_zero":  # an overfit run: 1e-4 with jumps of 500x, still far below where it began
            out.append(2.3 if step < 10 else 1e-4 * (500 if rng.random() < 0.05 else rng.uniform(0.5, 2)))
        elif kind == "lm":  # a language model's loss, plateaus and bumps
            out.append(
                4.2 - 2.5 * (1 - math.exp(-step / 100)) + rng.gauss(0, 0.15) + (1.0 if step == 150 else 0)
            )
        elif kind == "pretrained":  # fine-tuning from a low start, a rough first few steps
            out.append((0.3 if step > 3 else 1.5) * rng.uniform(0.7, 1.6))
    return out


@pytest.mark.parametrize("kind", ["falling", "near_zero", "lm", "pretrained"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_loss_watch_never_fires_on_healthy_losses(kind, seed):
    watch = LossWatch()
    assert [x for x in healthy(kind, seed=seed) if watch.exploded(x)] == []


@pytest.mark.parametrize("jump", [300.0, 1e3, 1e9, float("inf")])
def test_the_loss_watch_fires_on_an_explosion(jump):
    watch = LossWatch()
    for loss in healthy("falling")[:60]:
        assert watch.exploded(loss) is None
    problem = watch.exploded(jump)
    assert problem and "over 100x the median" in problem
    assert LossWatch(None).exploded(jump) is None  # train.max_loss_jump=null: off


def module_for(max_loss_jump=100.0):
    nested = sn.nest(tiny_vit(), SPACE)
    sampler = make_sampler("sandwich", nested.space, k=3, seed=0)
    return SortedNetModule(
        nested,
        Classification(),
        sampler,
        optim={"lr": 3e-3},
        max_loss_jump=max_loss_jump,
        max_nonfinite_steps=3,
    )


class Blowup(L.Callback):
    """From optimizer step `at` on, the classifier's weights times `scale` (what a blown-up step leaves)."""

    def __init__(self, at: int, scale: float):
        self.at, self.scale = at, scale

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.at:
            with torch.no_grad():
                module.nested.model.classifier.weight.mul_(self.scale)


class Spike(L.Callback):
    """For batch `at` only, the classifier's weights times 1e4 (undone after it): one odd step whose loss spikes."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.at:
            with torch.no_grad():
                module.nested.model.classifier.weight.mul_(1e4)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.at:
            with torch.no_grad():
                module.nested.model.classifier.weight.div_(1e4)


def test_one_loss_spike_is_skipped_and_training_goes_on():
    module = module_for()
    trainer(max_steps=20, callbacks=[Spike(15)]).fit(module, datamodule=digits())
    assert module.skipped_steps == 1 and module.global_step == 20 and module.nonfinite_in_a_row == 0


def test_a_healthy_run_trains_to_the_end_with_the_watch_on():
    module = module_for()
    trainer(max_steps=40).fit(module, datamodule=digits())
    assert module.global_step == 40 and len(module.loss_watch.recent) == 40 and module.skipped_steps == 0


@pytest.mark.parametrize(
    "scale, jump, message",
    [
        (1e4, 100.0, "is over 100x the median"),  # the loss explodes: stopped before the step
        (1e9, None, "weight tensors hold a magnitude over 1e+06 (classifier.weight)"),  # the save refuses
    ],
)
def test_a_diverging_run_keeps_the_last_good_pair(scale, jump, message, tmp_path):
    module = module_for(jump)
    keep = NestedCheckpoint(dirpath=str(tmp_path), every_n_train_steps=2, save_last=True, save_top_k=0)
    fit = trainer(max_steps=30, callbacks=[Blowup(13, scale), keep], plugins=[AtomicCheckpointIO()])
    with pytest.raises(Diverged) as err:
        fit.fit(module, datamodule=digits())
    text = str(err.value)
    assert "\n" not in text and message in text and text.startswith("training diverged at step 1"), text
    meta = sn.read_metadata(tmp_path / "last.safetensors")
    assert meta["global_step"] == 12 and meta["huge"] == [] and meta["nonfinite"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.safetensors"]
    saved = sn.load(tmp_path / "last.safetensors")
    assert float(saved.model.classifier.weight.detach().abs().max()) < 10


def test_select_and_export_refuse_absurd_weights(tmp_path, capsys):
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    nested = sn.nest(tiny_vit(), SPACE)
    with torch.no_grad():
        nested.model.classifier.weight.mul_(1e30)  # finite, as the diverged run left them
    table = [{"subnet": str(s), "params": 1, "accuracy": 0.1} for s in nested.space.subnets()]
    nested.save(path, metadata={"eval_table": table})
    assert sn.read_metadata(path)["huge"] == ["classifier.weight"]
    assert call(select.main, path, "--max-params", "1M") == 2
    err = capsys.readouterr().err.strip()
    assert (
        "absurd weights (magnitude over 1e+06) (classifier.weight): the run diverged" in err
        and "\n" not in err
    )
    assert call(export.main, path, "--subnet", "depth=1,heads=2,ffn=0.25", "--out", tmp_path / "x") == 2
    assert "absurd weights" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
