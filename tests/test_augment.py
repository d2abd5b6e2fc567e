"""Train-time augmentation (data.augment): shapes and soft labels, the same batch from the same seed, off in
validation, the per-image ops against PIL, mixup/cutmix/erasing arithmetic, one-line refusals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sortednet.data import ImageClassificationDataModule
from sortednet.data.augment import Augment, erase
from sortednet.data.image_ops import RAND_OPS, equalize, posterize, rand_augment, solarize

DEIT = {
    "crop": 0.08,
    "flip": 0.5,
    "randaugment": [2, 9],
    "erasing": 0.25,
    "mixup": 0.8,
    "cutmix": 1.0,
    "smoothing": 0.1,
    "repeats": 3,
}


def batch(n: int = 6, channels: int = 3, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.rand(n, channels, size, size, generator=g) * 2 - 1,
        "labels": torch.randint(0, 10, (n,), generator=g),
    }


def test_deits_augmentation_repeats_each_image_and_gives_class_probabilities():
    augment = Augment(**DEIT)
    out = augment(batch(), 10, [0.5] * 3, [0.5] * 3, seed=1)
    assert out["pixel_values"].shape == (18, 3, 16, 16) and out["labels"].shape == (18, 10)
    torch.testing.assert_close(out["labels"].sum(-1), torch.ones(18))
    assert out["labels"].min() >= 0.1 / 10 * 0.999  # smoothing: no class below its share
    again = augment(batch(), 10, [0.5] * 3, [0.5] * 3, seed=1)
    assert torch.equal(out["pixel_values"], again["pixel_values"]) and torch.equal(
        out["labels"], again["labels"]
    )
    other = augment(batch(), 10, [0.5] * 3, [0.5] * 3, seed=2)
    assert not torch.equal(out["pixel_values"], other["pixel_values"])
    copies = out["pixel_values"].view(6, 3, 3, 16, 16)
    assert not torch.equal(copies[:, 0], copies[:, 1])  # the repeats are augmented apart


def test_deit_iiis_augmentation_keeps_integer_labels_without_mixing():
    augment = Augment(pad_crop=4, flip=0.5, three_augment=True, color_jitter=0.3)
    out = augment(batch(), 10, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], seed=0)
    assert out["pixel_values"].shape == (6, 3, 16, 16) and out["labels"].dtype == torch.long
    assert Augment(cutmix=1.0).soft_labels and not augment.soft_labels


def test_the_data_module_augments_training_batches_only_and_reads_a_smaller_batch_under_repeats():
    data = ImageClassificationDataModule(batch_size=12, augment={"crop": 0.5, "smoothing": 0.1, "repeats": 3})
    data.setup("fit")
    assert data.train_dataloader().batch_size == 4
    loaded = next(iter(data.train_dataloader()))
    module = SimpleNamespace(micro=0)
    data.trainer = SimpleNamespace(training=False, global_step=5, global_rank=0, lightning_module=module)
    assert data.on_after_batch_transfer(loaded, 0) is loaded  # validation, sanity check: as loaded
    data.trainer.training = True
    out = data.on_after_batch_transfer(loaded, 0)
    assert out["pixel_values"].shape == (12, 1, 8, 8) and out["labels"].shape == (12, 10)
    same = data.on_after_batch_transfer(loaded, 0)
    assert torch.equal(out["pixel_values"], same["pixel_values"])  # a function of (seed, step, micro, rank)
    module.micro = 1
    assert not torch.equal(out["pixel_values"], data.on_after_batch_transfer(loaded, 0)["pixel_values"])


def pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def tensor(im: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


def test_equalize_posterize_and_solarize_match_pil():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 3, 12, 12, generator=g) ** 2 * 255).round() / 255  # uneven histograms
    for i in range(3):
        torch.testing.assert_close(equalize(x[i : i + 1])[0], tensor(ImageOps.equalize(pil(x[i]))))
        torch.testing.assert_close(
            posterize(x[i : i + 1], torch.tensor([3.0]))[0], tensor(ImageOps.posterize(pil(x[i]), 3))
        )
        torch.testing.assert_close(
            solarize(x[i : i + 1], torch.tensor([128 / 255]))[0], tensor(ImageOps.solarize(pil(x[i]), 128))
        )


@pytest.mark.parametrize("name", list(RAND_OPS))
def test_every_randaugment_op_keeps_shape_and_range(name):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 10, 10, generator=g)
    out = RAND_OPS[name](x, torch.full((4,), 0.9), g)
    assert out.shape == x.shape and out.min() >= -1e-6 and out.max() <= 1 + 1e-6


def test_randaugment_draws_its_ops_per_image():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = rand_augment(x.clone(), 2, 9, 0.5, torch.Generator().manual_seed(1))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert 0 < int(changed.sum()) < 64  # some images left alone (each op with p = 0.5), others changed


def test_mixup_mixes_images_and_labels_with_one_lambda():
    x = batch(8)
    out = Augment(mixup=0.8)(x, 10, [0.5] * 3, [0.5] * 3, seed=3)
    labels = torch.nn.functional.one_hot(x["labels"], 10).float()
    lam = ((out["labels"] - labels.flip(0)) / (labels - labels.flip(0)))[labels != labels.flip(0)]
    assert torch.allclose(lam, lam[0].expand_as(lam), atol=1e-6)
    torch.testing.assert_close(
        out["pixel_values"], lam[0] * x["pixel_values"] + (1 - lam[0]) * x["pixel_values"].flip(0)
    )


def test_cutmix_pastes_a_box_whose_area_is_the_label_weight():
    x = batch(8)
    out = Augment(cutmix=1.0)(x, 10, [0.5] * 3, [0.5] * 3, seed=4)
    pasted = (out["pixel_values"] != x["pixel_values"]).any(1).float().mean((1, 2))
    other = x["labels"].flip(0)
    for i in (x["labels"] != other).nonzero().flatten().tolist():  # the partner's class gets the pasted share
        assert pasted[i].item() == pytest.approx(out["labels"][i, other[i]].item(), abs=1e-6)


def test_random_erasing_fills_one_box_of_a_third_of_the_image_at_most():
    x = torch.zeros(32, 3, 20, 20)
    out = erase(x, 1.0, torch.Generator().manual_seed(0))
    area = (out != 0).any(1).float().mean((1, 2))
    assert (area >= 0.015).all() and (area <= 1 / 3 + 0.05).all()
    assert torch.equal(erase(x, 0.0, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"crop": 0}, r"^data.augment.crop=0 is not above 0"),
        ({"randaugment": [2]}, r"^data.augment.randaugment=\[2\]; allowed: \[N ops, magnitude of 10\]"),
        ({"randaugment": [2, 11]}, r"^data.augment.randaugment\[1\]=11 is above 10"),
        (
            {"crop": 0.5, "pad_crop": 4},
            r"^data.augment.crop=0.5 with data.augment.pad_crop=4; allowed: one crop",
        ),
        ({"smoothing": 1.0}, r"^data.augment.smoothing=1.0 is not below 1"),
        ({"mixup_alpha": 1.0}, r"^data.augment.mixup_alpha is unknown; allowed: crop, pad_crop"),
    ],
)
def test_bad_augmentation_is_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        Augment.make(options)


def test_repeats_must_divide_the_batch():
    with pytest.raises(ValueError, match=r"^data.augment.repeats=3 does not divide data.batch_size=64"):
        ImageClassificationDataModule(augment={"repeats": 3})


def test_a_run_trains_on_augmented_batches_and_validates_on_plain_ones(tmp_path, monkeypatch):
    from test_recipes import COMMON, compose_recipe, hub_free_overrides

    import sortednet.tasks as tasks
    from sortednet.cli.train import run

    seen: dict[str, set] = {"loss": set(), "stats": set()}
    loss, stats = tasks.Task.loss, tasks.Task.stats

    def recording(name, method):
        def wrapped(self, logits, labels):
            seen[name].add((labels.dtype, tuple(labels.shape)))
            return method(self, logits, labels)

        return wrapped

    monkeypatch.setattr(tasks.Task, "loss", recording("loss", loss))
    monkeypatch.setattr(tasks.Task, "stats", recording("stats", stats))
    overrides = [f"run_dir={tmp_path}/run", *COMMON, *hub_free_overrides("snnet_deit", tmp_path)]
    run(compose_recipe("snnet_deit", overrides))  # batch 18: 6 images x 3 repeats, mixup/cutmix, smoothing
    assert seen["loss"] == {(torch.float32, (18, 10))}
    assert seen["stats"] == {(torch.int64, (18,))}
