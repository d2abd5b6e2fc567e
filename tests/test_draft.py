"""nested.draft(subnet): a plain model over views of the nested weights, usable as HF assistant_model."""

import pytest
import torch
import transformers as T
from tiny import build, inputs, output

import sortednet as sn

SPACE = sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4])
CASES = [("gpt2", "depth=2,ffn=0.5"), ("llama", "depth=2,ffn=0.5,heads=2"), ("qwen2", "depth=2,heads=2")]
CASES += [("mistral", "depth=2,ffn=0.5,heads=2")]


def storages(module):
    """[(first byte, end byte)] of every parameter's storage."""
    return [
        (p.untyped_storage().data_ptr(), p.untyped_storage().data_ptr() + p.untyped_storage().nbytes())
        for p in module.parameters()
    ]


@pytest.mark.parametrize("name, subnet", CASES)
def test_draft_shares_storage_and_equals_the_subnet(name, subnet):
    nested = sn.nest(build(name), SPACE)
    draft = nested.draft(subnet)
    assert type(draft) is type(nested.model) and not draft.training
    nested_storages = storages(nested)
    for p in draft.parameters():
        assert any(lo <= p.data_ptr() < hi for lo, hi in nested_storages), "a draft weight was copied"
        assert not p.requires_grad
    batch = inputs(name)
    with torch.no_grad(), nested.use(subnet):
        want = output(nested, batch)
    with torch.no_grad():
        assert (output(draft, batch) - want).abs().max().item() <= 1e-5
    assert draft.num_parameters() == nested.num_params(subnet)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_draft_sees_in_place_updates_of_the_nested_weights(name):
    nested = sn.nest(build(name), SPACE)
    subnet = "depth=2,ffn=0.5"
    draft = nested.draft(subnet)
    nested.train()
    optimizer = torch.optim.SGD(nested.parameters(), lr=0.5)
    with nested.use(subnet):  # a training step: the optimizer updates the nested tensors in place
        output(nested, inputs(name)).float().pow(2).mean().backward()
    optimizer.step()
    nested.eval()
    batch = inputs(name, seed=4)
    with torch.no_grad():
        want = output(nested.extract(subnet), batch)
        assert (output(draft, batch) - want).abs().max().item() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name, subnet", CASES)
def test_assisted_generation_with_the_draft_equals_the_full_model_alone(name, subnet):
    nested = sn.nest(build(name), SPACE)
    draft = nested.draft(subnet)
    ids = inputs(name, batch=1, seq=6)["input_ids"]
    kwargs = dict(max_new_tokens=24, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        alone = nested.generate(ids, **kwargs)
        assisted = nested.generate(ids, assistant_model=draft, **kwargs)
        plain = nested.unnest().generate(ids, assistant_model=draft, **kwargs)
    assert torch.equal(assisted, alone) and torch.equal(plain, alone)
    assert alone.shape[1] == 6 + 24


def test_draft_with_hidden_nesting_is_a_view_too():
    nested = sn.nest(build("llama"), sn.NestingSpace(depth=[2, 4], hidden=[0.5, 1.0], heads=[2, 4]))
    subnet = "depth=2,hidden=0.5,heads=2"
    draft = nested.draft(subnet)
    assert draft.config.hidden_size == 16
    assert draft.model.embed_tokens.weight.data_ptr() == nested.model.model.embed_tokens.weight.data_ptr()
    batch = inputs("llama")
    with torch.no_grad(), nested.use(subnet):
        assert (output(draft, batch) - output(nested, batch)).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "name, space, subnet, message",
    [
        (
            "gpt2",
            dict(heads=[2, 4]),
            "heads=2",
            r"draft\(heads=2\): heads=2 cannot be exported as a plain GPT2",
        ),
        (
            "gpt2",
            dict(hidden=[0.5, 1.0], heads=[2, 4]),
            "hidden=0.5,heads=2",
            r"attn.c_attn.weight is a fused",
        ),
        ("llama", dict(rank=[0.5, 1.0]), "rank=0.5", r"draft\(rank=0.5\): factorised \(rank\) projections"),
    ],
)
def test_what_cannot_be_a_view_is_refused_in_one_line(name, space, subnet, message):
    nested = sn.nest(build(name), sn.NestingSpace(**space))
    with pytest.raises(ValueError, match=message) as err:
        nested.draft(subnet)
    assert "\n" not in str(err.value) and "allowed: depth and ffn subnets" in str(err.value)


def test_draft_of_a_per_depth_head_model_reads_its_depths_own_head():
    torch.manual_seed(0)
    config = T.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        tie_word_embeddings=False,
    )
    nested = sn.nest(T.LlamaForCausalLM(config).eval(), SPACE, head="per_depth")
    with torch.no_grad():  # the depth-2 copy of the LM head differs from the full model's
        nested.model.lm_head.depth_heads["2"].weight.mul_(-1.5)
    subnet = "depth=2,ffn=0.5,heads=2"
    draft = nested.draft(subnet)
    copy = nested.model.lm_head.depth_heads["2"].weight
    assert draft.lm_head.weight.data_ptr() == copy.data_ptr()
    batch = inputs("llama")
    with torch.no_grad(), nested.use(subnet):
        assert (output(draft, batch) - output(nested, batch)).abs().max().item() <= 1e-5
