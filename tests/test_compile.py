"""`train.compile`: the compiled training step gives eager's losses and gradients over sandwich steps (tiny
LLaMA and GPT-2), compiles one graph per subnet (a subnet drawn again reuses its graph), and its values are
checked before training."""

import copy

import lightning as L
import pytest
import torch
import transformers as T

import sortednet as sn
from sortednet.sampling import make_sampler
from sortednet.tasks import CausalLM
from sortednet.train import SortedNetModule
from sortednet.train.compiled import check_compile, compile_backend, compiled_graphs
from sortednet.train.options import Train

VOCAB, STEPS = 64, 3
MODELS = {  # dropout off: compiled and eager dropout draw different masks
    "llama": lambda: T.LlamaForCausalLM(
        T.LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=48,
        )
    ),
    "gpt2": lambda: T.GPT2LMHeadModel(
        T.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=16,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )
    ),
}  # fmt: skip
SPACE = dict(depth=[1, 2], ffn=[0.5, 1.0], heads=[2, 4])


def test_compile_values_are_checked():
    assert compile_backend(False) is None and compile_backend(True) == "inductor"
    assert compile_backend("aot_eager") == "aot_eager"
    with pytest.raises(
        ValueError, match=r"^train\.compile='inductr' is not a torch.compile backend; allowed: "
    ):
        Train(compile="inductr")
    with pytest.raises(ValueError, match=r"^train\.compile=3 is not allowed"):
        Train(compile=3)
    with pytest.raises(ValueError, match=r"^train\.compile=true with train\.rank\.sampling=per_layer"):
        check_compile("inductor", "per_layer")
    check_compile("inductor", "per_model")
    check_compile(None, "per_layer")


class Record(L.Callback):
    """Each optimizer step's gradients (before the update) and each training step's loss."""

    def __init__(self):
        self.grads, self.losses = [], []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.grads.append(
            {n: p.grad.clone() for n, p in module.nested.named_parameters() if p.grad is not None}
        )

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def train(nested: sn.NestedModel, backend: str | None) -> tuple[Record, SortedNetModule]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (STEPS * 4, 12), generator=g)
    data = torch.utils.data.DataLoader([{"input_ids": i, "labels": i} for i in ids], batch_size=4)
    sampler = make_sampler("sandwich", nested.space, k=3, seed=1)
    module = SortedNetModule(nested, CausalLM(), sampler, optim={"lr": 1e-2}, compile=backend or False)
    record = Record()
    L.Trainer(
        max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[record],
    ).fit(module, train_dataloaders=data)  # fmt: skip
    return record, module


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, backend", [("llama", "aot_eager"), ("gpt2", "aot_eager"), ("llama", "inductor")]
)  # inductor's C++ build takes ~1 min a model on 2 cores: one model shows the real backend
def test_compiled_sandwich_steps_equal_eager(name, backend):
    torch.manual_seed(0)
    model = MODELS[name]()
    eager_nested = sn.nest(copy.deepcopy(model), sn.NestingSpace(SPACE))
    compiled_nested = sn.nest(model, sn.NestingSpace(SPACE))
    torch._dynamo.reset()
    before = compiled_graphs()
    eager, _ = train(eager_nested, None)
    compiled, module = train(compiled_nested, backend)
    graphs = compiled_graphs() - before
    drawn = {str(s) for step in range(STEPS) for s in module.sampler.sample(step, 0)}
    assert graphs == len(drawn), (graphs, drawn)  # one graph per subnet drawn: no recompile on a repeat
    assert len(drawn) < STEPS * 3  # some subnet was drawn again (largest and smallest are in every step)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(compiled.losses, eager.losses, **tol)
    assert len(compiled.grads) == len(eager.grads) == STEPS
    for got, want in zip(compiled.grads, eager.grads, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], **tol, msg=key)
    for (key, got), want in zip(
        compiled_nested.state_dict().items(), eager_nested.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, want, **tol, msg=key)
