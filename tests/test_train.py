"""The Lightning module: exact gradient accumulation over subnets and batches, exact resume, distillation."""

import copy

import lightning as L
import pytest
import torch
from tiny import digits_vit as tiny_vit

import sortednet as sn
from sortednet.data import ImageClassificationDataModule
from sortednet.sampling import make_sampler
from sortednet.train import Classification, SortedNetModule
from sortednet.train.callbacks import NestedCheckpoint

SPACE = sn.NestingSpace(depth=[1, 2, 3], ffn=[0.25, 1.0], heads=[2, 4])


def digits(batch_size=16):
    data = ImageClassificationDataModule(batch_size=batch_size, seed=0)
    data.prepare_data()
    data.setup("fit")
    return data


def trainer(max_steps, callbacks=(), **kw):
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=list(callbacks),
        **{"enable_checkpointing": bool(callbacks), **kw},
    )


class GradCapture(L.Callback):
    def __init__(self):
        self.grads = None

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if self.grads is None:
            self.grads = {
                n: p.grad.clone() for n, p in module.nested.named_parameters() if p.grad is not None
            }


@pytest.mark.parametrize(
    "sampler_name, k, accumulate", [("uniform", 3, 2), ("sandwich", 4, 3), ("budget", 2, 1)]
)
def test_accumulation_is_the_mean_over_subnets_and_batches(sampler_name, k, accumulate):
    data = digits()
    model = tiny_vit()
    reference = sn.nest(copy.deepcopy(model), SPACE)
    nested = sn.nest(model, SPACE)
    sampler = make_sampler(sampler_name, nested.space, k=k, seed=5)
    module = SortedNetModule(nested, Classification(), sampler, accumulate=accumulate, grad_clip=None)
    capture = GradCapture()
    trainer(1, [capture], enable_checkpointing=False).fit(module, datamodule=data)

    loader = iter(data.train_dataloader())
    drawn = set()
    for micro in range(accumulate):
        batch = next(loader)
        subnets = sampler.sample(0, micro)
        drawn.update(subnets)
        for subnet in subnets:
            with reference.use(subnet):
                loss = torch.nn.functional.cross_entropy(
                    reference(pixel_values=batch["pixel_values"]).logits, batch["labels"]
                )
            (loss / (len(subnets) * accumulate)).backward()
    assert len(drawn) > 1 and any(nested.sizes(s)["depth"] < 3 for s in drawn)
    want = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert capture.grads.keys() == want.keys()
    for name, grad in want.items():
        torch.testing.assert_close(capture.grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def fit(tmp_path, max_steps, ckpt_path=None):
    data = digits()
    nested = sn.nest(tiny_vit(), SPACE)
    module = SortedNetModule(
        nested,
        Classification(),
        make_sampler("sandwich", nested.space, k=3, seed=1),
        accumulate=2,
        optim={"lr": 3e-3, "warmup_steps": 2},
    )
    recorder = LossRecorder()
    checkpoint = NestedCheckpoint(
        dirpath=str(tmp_path), every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    trainer(max_steps, [recorder, checkpoint]).fit(module, datamodule=data, ckpt_path=ckpt_path)
    return recorder.losses, module


def test_resume_continues_the_same_loss_sequence(tmp_path):
    full, _ = fit(tmp_path / "a", max_steps=7)
    assert len(full) == 14
    ckpt = tmp_path / "a" / "step=3.ckpt"
    assert ckpt.is_file() and (tmp_path / "a" / "step=3.safetensors").is_file()
    resumed, module = fit(tmp_path / "b", max_steps=7, ckpt_path=str(ckpt))
    assert resumed == pytest.approx(full[6:], rel=1e-6, abs=1e-7)
    assert module.trainer.global_step == 7


def test_one_file_checkpoint_beside_each_ckpt_loads_as_the_trained_model(tmp_path):
    _, module = fit(tmp_path, max_steps=3)
    loaded = sn.load(tmp_path / "step=3.safetensors")
    assert loaded.metadata["global_step"] == 3
    x = torch.randn(2, 1, 8, 8)
    module.nested.eval()
    with (
        torch.no_grad(),
        loaded.use("depth=2,ffn=0.25,heads=2"),
        module.nested.use("depth=2,ffn=0.25,heads=2"),
    ):
        assert torch.equal(loaded(pixel_values=x).logits, module.nested(pixel_values=x).logits)


def test_distillation_needs_the_largest_subnet_every_step():
    nested = sn.nest(tiny_vit(), SPACE)
    with pytest.raises(
        ValueError, match=r"train.distill.enabled=true needs the largest subnet .* sampler='uniform'"
    ):
        SortedNetModule(
            nested, Classification(), make_sampler("uniform", nested.space, k=2), distill={"enabled": True}
        )


def test_distillation_adds_the_kd_term_for_all_but_the_largest():
    data = digits()
    model = tiny_vit()
    reference = sn.nest(copy.deepcopy(model), SPACE)
    nested = sn.nest(model, SPACE)
    sampler = make_sampler("sandwich", nested.space, k=3, seed=2)
    module = SortedNetModule(
        nested,
        Classification(),
        sampler,
        grad_clip=None,
        distill={"enabled": True, "alpha": 0.7, "temperature": 2.0},
    )
    capture = GradCapture()
    trainer(1, [capture], enable_checkpointing=False).fit(module, datamodule=data)
    batch = next(iter(data.train_dataloader()))
    task = Classification()
    subnets = sampler.sample(0, 0)
    assert subnets[0] == nested.space.largest
    teacher = None
    for subnet in subnets:
        with reference.use(subnet):
            logits = reference(pixel_values=batch["pixel_values"]).logits
        loss = task.loss(logits, batch["labels"])
        if teacher is None:
            teacher = logits.detach()
        else:
            loss = 0.3 * loss + 0.7 * task.distill(logits, teacher, batch["labels"], 2.0)
        (loss / len(subnets)).backward()
    for name, p in reference.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(capture.grads[name], p.grad, rtol=1e-5, atol=1e-7)
