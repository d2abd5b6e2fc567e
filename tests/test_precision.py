"""Mixed precision on CPU: `trainer.precision=bf16-mixed` trains through the CLI (in-place distillation on), every
family runs a sliced subnet's forward and backward under bf16 autocast with float32 gradients, the distillation KL
is float32 from bf16 logits, and 16-mixed with a GradScaler (fp16 autocast, CPU) lets the scaler skip inf steps
and clips the unscaled gradients."""

import lightning as L
import pytest
import torch
from test_cli_train import QUICK, cli
from tiny import FAMILIES, build, inputs, output, space

import sortednet as sn
from sortednet.tasks import CausalLM, Classification

SPACE = dict(depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4], hidden=[0.5, 1.0])


def test_cli_trains_in_bf16_mixed_with_distillation(tmp_path):
    run = tmp_path / "run"
    result = cli(
        "trainer.precision=bf16-mixed", "sampler=sandwich", "sampler.k=3", "train.distill.enabled=true",
        *QUICK[:3], f"hydra.run.dir={run}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    nested = sn.load(run)
    assert nested.metadata["global_step"] == 2
    params = list(nested.parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)
    rows = nested.metadata["eval_table"]
    assert len(rows) == len(nested.space) and all(0 <= r["accuracy"] <= 1 for r in rows)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_a_sliced_subnet_under_bf16_autocast(name):
    nested = sn.nest(build(name), space(name, **SPACE))
    nested.train()
    batch = inputs(name)
    ordered = nested.space.subnets()
    for subnet in (ordered[0], ordered[len(ordered) // 2], ordered[-1]):
        with nested.use(subnet), torch.autocast("cpu", dtype=torch.bfloat16):
            out = output(nested, batch)  # bf16, or float32 where the model ends in a norm (BertModel)
            out.float().square().mean().backward()
    grads = [p.grad for p in nested.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("task", [Classification(), CausalLM()])
def test_distillation_kl_is_float32_from_bf16_logits(task):
    torch.manual_seed(0)
    student = torch.randn(2, 5, 11)
    teacher = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5)) if isinstance(task, CausalLM) else torch.randint(0, 11, (2,))
    if isinstance(task, Classification):
        student, teacher = student[:, 0], teacher[:, 0]
    want = task.distill(student, teacher, labels, 2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = task.distill(student.bfloat16(), teacher.bfloat16(), labels, 2.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0.05, atol=1e-3)  # only the bf16 rounding of the logits


def test_fp16_gradscaler_skips_inf_steps_and_clips_unscaled_gradients():
    from lightning.pytorch.plugins.precision import MixedPrecision
    from tiny import digits_vit

    from sortednet.data import ImageClassificationDataModule
    from sortednet.sampling import make_sampler
    from sortednet.train import SortedNetModule

    norms = []

    class Recording(SortedNetModule):
        def on_before_optimizer_step(self, optimizer):
            super().on_before_optimizer_step(optimizer)  # the clipping
            grads = [p.grad for p in self.nested.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    nested = sn.nest(digits_vit(), sn.NestingSpace(depth=[1, 3], ffn=[0.25, 1.0]))
    sampler = make_sampler("sandwich", nested.space, k=2)
    module = Recording(nested, Classification(), sampler, grad_clip=0.5, max_nonfinite_steps=2)
    # fp16 gradients overflow at the first scale (2^24), fit at the third (2^8)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, backoff_factor=2.0**-8, growth_interval=1000)
    precision = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    L.Trainer(
        max_steps=12, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, plugins=[precision],
    ).fit(module, datamodule=ImageClassificationDataModule(batch_size=16, seed=0))  # fmt: skip
    assert module.optimizers().optimizer.defaults["fused"] is None  # Lightning unscales, then the step
    assert scaler.get_scale() < 2.0**24  # it met inf gradients and lowered the scale; the guard let it
    assert module.skipped_steps == 0
    finite = [n for n in norms if n == n and n != float("inf")]
    assert norms[0] != norms[0] and len(finite) >= 8  # the first step overflowed (skipped by the scaler)
    assert all(0.05 < n <= 0.5 + 1e-3 for n in finite), norms  # unscaled, then clipped to 0.5
