"""Stitched models train with the same SortedNetModule as nested ones: exact resume, the one-file checkpoint beside
each .ckpt, distillation from the largest anchor, and the refusal of what only nested models can do."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from test_train import LossRecorder, digits, trainer

import sortednet as sn
from sortednet.sampling import make_sampler
from sortednet.train import Classification, SortedNetModule
from sortednet.train.callbacks import NestedCheckpoint
from sortednet.train.stitching import Stitching


def stitched_digits(members=None) -> sn.StitchedModel:
    anchors = {}
    for name, hidden in (("small", 16), ("large", 32)):
        torch.manual_seed(hidden)
        config = T.ViTConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=hidden,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            num_labels=10,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        anchors[name] = T.ViTForImageClassification(config)
    batch = next(iter(digits().val_dataloader()))
    return sn.stitch(anchors, calibration=[{"pixel_values": batch["pixel_values"]}], members=members)


def fit(tmp_path, max_steps, ckpt_path=None, distill=False):
    stitched = stitched_digits()
    module = SortedNetModule(
        stitched,
        Classification(),
        make_sampler("sandwich", stitched.space, k=3, seed=1),
        optim={"lr": 3e-3, "warmup_steps": 2},
        distill={"enabled": distill},
    )
    recorder = LossRecorder()
    checkpoint = NestedCheckpoint(
        dirpath=str(tmp_path), every_n_train_steps=2, save_top_k=-1, filename="{step}"
    )
    trainer(max_steps, [recorder, checkpoint]).fit(module, datamodule=digits(), ckpt_path=ckpt_path)
    return recorder.losses, module


def test_stitched_training_resumes_exactly_and_writes_the_one_file_checkpoint(tmp_path):
    full, module = fit(tmp_path / "a", max_steps=4, distill=True)
    assert len(full) == 4
    resumed, again = fit(
        tmp_path / "b", max_steps=4, ckpt_path=str(tmp_path / "a" / "step=2.ckpt"), distill=True
    )
    assert resumed == pytest.approx(full[2:], rel=1e-6, abs=1e-7)
    state, state_again = module.nested.state_dict(), again.nested.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(value, state_again[key], rtol=1e-5, atol=1e-6, msg=key)
    loaded = sn.load(tmp_path / "a" / "step=4.safetensors")
    assert isinstance(loaded, sn.StitchedModel) and loaded.metadata["global_step"] == 4
    x = torch.randn(2, 1, 8, 8)
    module.nested.eval()
    member = next(m for m in loaded.space if not m.is_anchor)
    with torch.no_grad(), loaded.use(member), module.nested.use(member):
        assert torch.equal(loaded(pixel_values=x).logits, module.nested(pixel_values=x).logits)


def test_slice_only_options_refuse_a_stitched_model_in_one_line():
    stitched = stitched_digits()
    module = SortedNetModule(
        stitched, Classification(), make_sampler("uniform", stitched.space, k=1), optim={"update": "touched"}
    )
    module.trainer = trainer(1)
    with pytest.raises(ValueError, match="optim.update='touched' needs a nested model"):
        module.configure_optimizers()


def digits_stitching(members=None) -> Stitching:
    anchor = {
        "class_name": "ViTForImageClassification",
        "config": {"model_type": "vit", "num_hidden_layers": 3, "num_attention_heads": 2, "patch_size": 2},
    }
    anchors = {
        name: {**anchor, "config": {**anchor["config"], "hidden_size": h, "intermediate_size": 2 * h}}
        for name, h in (("small", 16), ("large", 32))
    }
    return Stitching.from_config({"anchors": anchors, "window": 2, "members": members})


def test_stitch_members_train_one_stitch_from_the_same_least_squares_init():
    member = "small:2>large:2"
    space = digits_stitching([member]).space()
    assert [str(m) for m in space] == [member]
    full, alone = stitched_digits(), stitched_digits(members=[member])
    assert [str(m) for m in alone.space] == [member] and list(alone.stitches) == [member]
    torch.testing.assert_close(alone.stitches[member].weight, full.stitches[member].weight)
    anchor = stitched_digits(members=["large"])  # nothing to fit: calibration batches are no error
    assert [str(m) for m in anchor.space] == ["large"] and not anchor.stitches
    with pytest.raises(
        ValueError, match=r"^stitch.members: stitch 'small:9>large:2' is not in the stitch space"
    ):
        digits_stitching(["small:9>large:2"]).space()
