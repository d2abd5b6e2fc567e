"""Slice-aware gradients (sortednet/slice_grad.py) equal autograd's own, for every family: float64, several
subnets and micro-batches accumulated into one step, plain, hidden-nested and factorised (rank) layers, fused
blocks (GPT-2's c_attn, Phi-3's gate_up_proj) and Conv1D; the gradient stays one tensor through the step, and a
layer no subnet ran keeps grad=None."""

import pytest
import torch
from tiny import FAMILIES, build, inputs, output, space

import sortednet as sn
from sortednet.layers import SlicedEmbedding, SlicedLinear
from sortednet.slice_grad import slice_aware_grads

SPACES = {
    "plain": dict(depth=[2, 3, 4], ffn=[0.5, 1.0], heads=[2, 4], hidden=[0.5, 1.0]),
    "rank": dict(depth=[2, 4], rank=[0.25, 1.0], heads=[2, 4], hidden=[0.5, 1.0]),
}


def nested64(name: str, kind: str) -> sn.NestedModel:
    nested = sn.nest(build(name).double(), space(name, **SPACES[kind]))
    return nested.double()


def batches(name: str, count: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(count):
        batch = inputs(name, seed=10 + i)
        out.append({k: v.double() if v.is_floating_point() else v for k, v in batch.items()})
    return out


def accumulate(nested: sn.NestedModel, subnets, micro: list[dict]) -> dict[str, torch.Tensor | None]:
    """One optimizer step's backwards: every micro-batch x every subnet, a random linear read of the output."""
    nested.zero_grad(set_to_none=True)
    for m, batch in enumerate(micro):
        for k, subnet in enumerate(subnets):
            with nested.use(subnet):
                out = output(nested, batch)
            g = torch.Generator().manual_seed(100 * m + k)
            (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum().backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in nested.named_parameters()}


def compare(nested: sn.NestedModel, subnets, micro: list[dict]) -> None:
    with slice_aware_grads(False):
        want = accumulate(nested, subnets, micro)
    got = accumulate(nested, subnets, micro)
    assert want.keys() == got.keys()
    for name in want:
        if want[name] is None or got[name] is None:
            assert want[name] is None and got[name] is None, name
            continue
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-12, msg=name)


def subnet_sets(nested: sn.NestedModel) -> list[list]:
    ordered = nested.space.subnets()
    shallow = [s for s in ordered if s["depth"] < nested.full["depth"]]
    return [
        [ordered[0], ordered[len(ordered) // 2], ordered[-1]],  # sliced and full width in one step
        shallow[:1] + shallow[-2:],  # no subnet runs the last layer: its parameters keep grad=None
    ]


@pytest.mark.parametrize("kind", list(SPACES))
@pytest.mark.parametrize("name", FAMILIES)
def test_slice_aware_gradients_equal_autograd(name, kind):
    nested = nested64(name, kind)
    nested.train()
    torch.manual_seed(0)
    for p in nested.parameters():  # biases and norms away from their init, so every term counts
        p.data.add_(torch.randn_like(p) * 0.01)
    if any(m.training and isinstance(m, torch.nn.Dropout) for m in nested.modules()):
        nested.eval()  # dropout off: the two passes must see the same function
    for subnets in subnet_sets(nested):
        compare(nested, subnets, batches(name, 2))
    last = nested.model.base_model.get_submodule(nested.family.layers)[nested.full["depth"] - 1]
    with slice_aware_grads(True):
        accumulate(nested, subnet_sets(nested)[1], batches(name, 1))
    assert all(p.grad is None for p in last.parameters())


def test_the_gradient_is_one_tensor_added_into_in_place():
    nested = nested64("llama", "plain")
    proj = next(m for m in nested.modules() if isinstance(m, SlicedLinear))
    small = nested.space.smallest
    batch = batches("llama", 1)[0]
    with nested.use(small):
        output(nested, batch).sum().backward()
        rows = nested.state.q  # the first projection is q_proj: heads x head size rows are used
    assert proj.out_roles == ("q",)
    grad = proj.base_layer.weight.grad
    ptr = grad.data_ptr()
    first = grad.clone()
    with nested.use(small):
        output(nested, batch).sum().backward()
    assert proj.base_layer.weight.grad.data_ptr() == ptr
    torch.testing.assert_close(proj.base_layer.weight.grad, 2 * first)
    assert rows < proj.full_out and proj.base_layer.weight.grad[rows:].abs().max() == 0


def test_embedding_gradient_respects_padding():
    nested = nested64("roberta", "plain")  # RoBERTa's word embeddings have padding_idx=1
    emb = next(m for m in nested.modules() if isinstance(m, SlicedEmbedding) and m.padding_idx is not None)
    batch = batches("roberta", 1)[0]
    batch["input_ids"][0, :3] = emb.padding_idx
    compare(nested, [nested.space.smallest], [batch])
    assert emb.base_layer.weight.grad[emb.padding_idx].abs().max() == 0


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_autocast_bf16_gradients_match_autograd(name):
    nested = sn.nest(build(name), space(name, **SPACES["plain"]))
    batch = inputs(name)
    subnets = [nested.space.smallest, nested.space.subnets()[len(nested.space) // 2]]

    def run():
        nested.zero_grad(set_to_none=True)
        for subnet in subnets:
            with nested.use(subnet), torch.autocast("cpu", dtype=torch.bfloat16):
                out = output(nested, batch)
            assert out.dtype == torch.bfloat16
            out.float().square().mean().backward()
        return {n: p.grad.clone() for n, p in nested.named_parameters() if p.grad is not None}

    with slice_aware_grads(False):
        want = run()
    got = run()
    assert want.keys() == got.keys()
    for n in want:
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n], want[n], rtol=2e-2, atol=1e-3, msg=n)
