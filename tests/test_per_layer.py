"""Per-layer sub-models (Mix'n'Match): sizes per layer and kept layers, spelt in text and as a dict, checked by the
space, run exactly as the plain layers they keep (masked references), counted exactly, generating with the KV
cache; skipped layers export, different widths per layer refuse in one line and load as a runnable model."""

import copy

import numpy as np
import pytest
import torch
import transformers as T
from tiny import llama4

import sortednet as sn
from sortednet.sampling import SandwichSampler
from sortednet.subnet import Subnet

SPACE = dict(depth=[2, 3, 4], ffn=[0.25, 0.5, 1.0], heads=[0.5, 1.0], per_layer=["ffn", "heads", "layers"])
MIXED = "ffn=[0.25,1.0,0.5],heads=[0.5,1.0,1.0],layers=0+2-3"


def ids(n=7):
    return torch.randint(0, 64, (2, n), generator=torch.Generator().manual_seed(2))


def masked(model, kept, ffn, heads):
    """The plain model of kept layers whose dropped FFN neurons and heads are cut by zeroing what they feed."""
    ref = copy.deepcopy(model)
    layers = ref.model.layers
    with torch.no_grad():
        for i, f, h in zip(kept, ffn, heads, strict=True):
            layers[i].mlp.down_proj.weight[:, f:] = 0
            layers[i].self_attn.o_proj.weight[:, h * 8 :] = 0
    ref.model.layers = torch.nn.ModuleList([layers[i] for i in kept])
    ref.config.num_hidden_layers = len(kept)
    for j, layer in enumerate(ref.model.layers):
        layer.self_attn.layer_idx = j
    return ref


def test_the_spelling_round_trips_in_text_and_as_a_dict():
    sub = Subnet.parse("ffn=[0.5,0.5,1.0,0.25],layers=0-2+5")
    assert str(sub) == "ffn=[0.5,0.5,1.0,0.25],layers=0-2+5" and Subnet.parse(str(sub)) == sub
    assert Subnet(ffn=[0.5, 0.5, 1.0, 0.25], layers=[5, 0, 1, 2]) == sub and sub.per_layer
    assert sub.as_dict() == {"ffn": (0.5, 0.5, 1.0, 0.25), "layers": (0, 1, 2, 5)}
    for bad, message in [
        ("ffn=[0.5,1.0],layers=0", "ffn gives 2 sizes for 1 kept layers"),
        ("depth=[2,4]", "gives a size per layer; allowed per layer: heads, ffn, rank"),
        ("layers=0-x", "is not layer ranges"),
        ("depth=2,layers=0+1", "a subnet gives depth or layers, not both"),
        ("colour=red", "unknown dimension 'colour'"),
        ("ffn=" + "x" * 300, r"\.\.\..*\(302 characters\)"),  # a long input is not echoed whole
    ]:
        with pytest.raises(ValueError, match=message):
            Subnet.parse(bad)


def test_the_space_allows_what_it_says_and_spells_members_canonically():
    nested = sn.nest(llama4(), sn.NestingSpace(**SPACE))
    space = nested.space
    assert str(space.normalize("ffn=[0.5,0.5],depth=2")) == "depth=2,heads=1.0,ffn=0.5"
    assert str(space.normalize("layers=0+1")) == "depth=2,heads=1.0,ffn=1.0"  # what depth=2 keeps
    assert str(space.normalize("layers=1+3,ffn=[1.0,0.25]")) == "heads=1.0,ffn=[1.0,0.25],layers=1+3"
    with pytest.raises(ValueError, match=r"allowed: 2 to 4 distinct layers of 0..3"):
        space.normalize("layers=0")
    uniform = sn.nest(llama4(), sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0]))
    with pytest.raises(ValueError, match=r"gives ffn per layer; this nesting space allows per layer: none"):
        uniform.space.normalize("depth=2,ffn=[0.5,1.0]")
    with pytest.raises(
        ValueError,
        match=r"^nesting.per_layer: 'hidden' cannot vary per layer; allowed: heads, ffn, rank, layers$",
    ):
        sn.NestingSpace(depth=[2, 4], hidden=[16, 32], per_layer=["hidden"])


def test_a_mixed_member_runs_as_its_plain_kept_layers_and_counts_exactly():
    model = llama4()
    reference = masked(model, [0, 2, 3], ffn=[16, 64, 32], heads=[2, 4, 4])
    nested = sn.nest(model, sn.NestingSpace(**SPACE))
    x = ids()
    with torch.no_grad(), nested.use(MIXED):
        got = nested(input_ids=x).logits
    assert (got - reference(input_ids=x).logits).abs().max().item() <= 1e-5
    config = model.config
    layers = sum(
        sum(p.numel() for p in T.models.llama.modeling_llama.LlamaDecoderLayer(
            T.LlamaConfig(**{**config.to_dict(), "intermediate_size": f, "num_attention_heads": h,
                             "num_key_value_heads": h // 2, "head_dim": 8}), 0).parameters())
        for f, h in [(16, 2), (64, 4), (32, 4)]
    )  # fmt: skip
    shared = sum(p.numel() for n, p in model.named_parameters() if ".layers." not in n)
    assert nested.num_params(MIXED) == layers + shared
    with torch.no_grad():
        assert torch.equal(nested(input_ids=x).logits, model(input_ids=x).logits)  # back at the largest


def test_generation_with_the_kv_cache_follows_the_kept_layers():
    model = llama4()
    reference = masked(model, [0, 2, 3], ffn=[16, 64, 32], heads=[2, 4, 4])
    nested = sn.nest(model, sn.NestingSpace(**SPACE))
    prompt = ids(5)[:1]
    with torch.no_grad(), nested.use(MIXED):
        tokens = nested.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(tokens, reference.generate(prompt, max_new_tokens=6, do_sample=False))


def test_skipped_layers_export_and_different_widths_load_as_the_nested_model(tmp_path):
    nested = sn.nest(llama4(), sn.NestingSpace(**SPACE))
    x = ids()
    skip = "ffn=0.5,layers=1+3"
    with torch.no_grad():
        with nested.use(skip):
            want = nested(input_ids=x).logits
        small = nested.extract(skip)
        assert small.config.num_hidden_layers == 2 and small.num_parameters() == nested.num_params(skip)
        assert torch.equal(small(input_ids=x).logits, want)
        with pytest.raises(
            ValueError, match=r"gives its layers different sizes, which a plain LlamaForCausalLM"
        ):
            nested.extract(MIXED)
        nested.save(tmp_path / "m.safetensors")
        assert torch.equal(sn.load_submodel(tmp_path / "m.safetensors", skip)(input_ids=x).logits, want)
        runnable = sn.load_submodel(tmp_path / "m.safetensors", MIXED)
        with nested.use(MIXED):
            assert torch.equal(runnable(input_ids=x).logits, nested(input_ids=x).logits)


def test_gpt2_sets_each_layers_own_split_size():
    config = T.GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=4, n_positions=16)
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(config).eval()
    nested = sn.nest(model, sn.NestingSpace(depth=[3], heads=[2, 4], per_layer=["heads"]))
    with nested.use("depth=3,heads=[2,4,2]"):
        splits = [block.attn.split_size for block in model.transformer.h]
    assert splits == [16, 32, 16]


def test_sampling_members_per_layer_is_deterministic_and_in_the_space():
    nested = sn.nest(llama4(), sn.NestingSpace(**SPACE))
    draws = [nested.space.sample_member(np.random.default_rng(4)) for _ in range(2)]
    assert draws[0] == draws[1] and draws[0] in nested.space
    sampler = SandwichSampler(nested.space, k=4, seed=1, per_layer=True)
    picks = sampler.sample(3)
    assert picks[:2] == [nested.space.largest, nested.space.smallest] and picks == sampler.sample(3)
    assert any(p.per_layer for p in picks[2:])
    with pytest.raises(
        ValueError, match="sampler.per_layer=true draws sizes per layer, but the nesting space"
    ):
        SandwichSampler(sn.NestingSpace(depth=[2, 4]), k=3, per_layer=True)
