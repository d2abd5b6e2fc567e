"""Per family: largest == original, every subnet extracts exactly, heads/depth really slice, configs consistent.

Parametrised over every tiny model in tests/tiny.py (one or more per registered model type); each uses the
dimensions its family nests."""

import pytest
import torch
from tiny import (
    FAMILIES,
    assert_switching_copies_nothing,
    build,
    exports_fewer_heads,
    family,
    inputs,
    output,
    space,
)

import sortednet as sn

SPACE = dict(depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4])
WITH_HEADS = [name for name in FAMILIES if "heads" in family(name).dims]
WITH_HIDDEN = [name for name in FAMILIES if "hidden" in family(name).dims]


def nested_pair(name):
    model = build(name)
    batch = inputs(name)
    ref = output(model, batch).detach()
    return sn.nest(model, space(name, **SPACE)), batch, ref


@pytest.mark.parametrize("name", FAMILIES)
def test_largest_subnet_equals_original(name):
    nested, batch, ref = nested_pair(name)
    with torch.no_grad():
        out = output(nested, batch)
    assert (out - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", FAMILIES)
def test_every_subnet_extracts_exactly(name):
    nested, batch, _ = nested_pair(name)
    exported = 0
    for subnet in nested.space.subnets():
        sizes = nested.sizes(subnet)
        if not exports_fewer_heads(name) and sizes["heads"] < nested.full["heads"]:
            with pytest.raises(ValueError, match="cannot be exported as a plain .*head_dim"):
                nested.extract(subnet)
            continue
        small = nested.extract(subnet)
        assert type(small) is type(nested.model)
        with torch.no_grad(), nested.use(subnet):
            want = output(nested, batch)
        got = output(small, batch)
        assert (got - want).abs().max().item() <= 1e-5, subnet
        cfg, full, keys = small.config, nested.full, nested.family.config_keys
        assert getattr(cfg, keys["depth"]) == sizes["depth"]
        assert getattr(cfg, keys["heads"]) == sizes["heads"]
        assert getattr(cfg, keys["ffn"]) == sizes["ffn"]
        if "kv_heads" in keys:
            assert getattr(cfg, keys["kv_heads"]) == sizes["heads"] * full["kv_heads"] // full["heads"]
        if exports_fewer_heads(name):
            assert getattr(cfg, nested.family.head_dim_key) == full["head_dim"]
        if isinstance(getattr(cfg, "layer_types", None), list):
            assert cfg.layer_types == nested.model.config.layer_types[: sizes["depth"]]
        assert small.num_parameters() == nested.num_params(subnet)
        assert all(p.is_contiguous() for p in small.parameters())
        nested_ptrs = {p.untyped_storage().data_ptr() for p in nested.parameters()}
        assert not nested_ptrs & {p.untyped_storage().data_ptr() for p in small.parameters()}
        exported += 1
    assert exported >= 4


@pytest.mark.parametrize("name", WITH_HEADS)
def test_fewer_heads_equal_the_full_model_with_those_heads_cut(name):
    """Reference without sortednet: zero the output projection's inputs from the dropped heads."""
    nested, batch, _ = nested_pair(name)
    reference = build(name)
    heads, head_dim = 2, nested.full["head_dim"]
    out_proj = {  # the projection each family's heads feed, and whether it stores (in, out)
        "bert": "attention.output.dense.weight",
        "deberta-v2": "attention.output.dense.weight",
        "distilbert": "attention.out_lin.weight",
        "llama": "self_attn.o_proj.weight",
        "qwen3": "self_attn.o_proj.weight",
        "gemma": "self_attn.o_proj.weight",
        "vit": "attention.o_proj.weight",
        "gpt2": "attn.c_proj.weight",
    }[nested.family.name]
    with torch.no_grad():
        for key, weight in reference.state_dict().items():
            if key.endswith(out_proj) and name == "gpt2":  # Conv1D: (in, out)
                weight[heads * head_dim :, :] = 0
            elif key.endswith(out_proj):
                weight[:, heads * head_dim :] = 0
        want = output(reference, batch)
        with nested.use(f"heads={heads}"):
            got = output(nested, batch)
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "vit"])
def test_skipped_layers_do_no_work(name):
    nested, batch, _ = nested_pair(name)
    calls = []
    layers = nested.model.base_model.get_submodule(nested.family.layers)
    for i in range(len(layers)):
        layers[i].register_forward_hook(lambda *_, i=i: calls.append(i))
    with torch.no_grad(), nested.use("depth=2"):
        output(nested, batch)
    assert calls == [0, 1]
    calls.clear()
    with torch.no_grad():
        output(nested, batch)
    assert calls == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_gradients_reach_only_the_active_slices(name):
    nested, batch, _ = nested_pair(name)
    nested.train()
    with nested.use("depth=2,ffn=0.5,heads=2"):
        output(nested, batch).float().pow(2).mean().backward()
        width = nested.state.ffn
    layers = nested.model.base_model.get_submodule(nested.family.layers)
    assert all(p.grad is None for p in layers[3].parameters())
    ffn_in = layers[0].mlp.c_fc if name == "gpt2" else layers[0].mlp.up_proj
    grad = ffn_in.weight.grad
    active = grad[:, :width] if name == "gpt2" else grad[:width]
    dropped = grad[:, width:] if name == "gpt2" else grad[width:]
    assert active.abs().sum() > 0 and dropped.abs().sum() == 0


def test_switching_copies_no_weights():
    nested, _, _ = nested_pair("llama")
    assert_switching_copies_nothing(nested, rounds=3)


def test_use_restores_the_previous_subnet():
    nested, _, _ = nested_pair("llama")
    nested.activate("depth=2,ffn=0.5,heads=4")
    with nested.use("depth=4,ffn=0.5,heads=2"):
        assert str(nested.active) == "depth=4,heads=2,ffn=0.5"
        assert nested.state.kv == 8
    assert str(nested.active) == "depth=2,heads=4,ffn=0.5"
    assert nested.state.depth == 2 and nested.state.ffn == 24 and nested.state.q == 32


def test_unnest_gives_back_the_plain_model():
    model = build("gpt2")
    batch = inputs("gpt2")
    ref = output(model, batch)
    nested = sn.nest(model, sn.NestingSpace(**SPACE))
    nested.activate(nested.space.smallest)
    plain = nested.unnest()
    assert not any(type(m).__module__.startswith("sortednet") for m in plain.modules())
    assert (output(plain, batch) - ref).abs().max().item() == 0


def test_generate_runs_under_a_subnet():
    nested, batch, _ = nested_pair("llama")
    with nested.use("depth=2,heads=2,ffn=0.5"):
        out = nested.generate(batch["input_ids"][:1], max_new_tokens=4, do_sample=False)
        small = nested.extract(nested.active)
    want = small.generate(batch["input_ids"][:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(out, want)


HIDDEN_SPACE = dict(depth=[2, 4], hidden=[16, 24, 32], heads=[2, 3, 4], ffn=[0.5, 1.0])


@pytest.mark.parametrize("name", WITH_HIDDEN)
def test_hidden_nesting_is_exact_at_full_width_and_extracts(name):
    model = build(name)
    batch = inputs(name)
    ref = output(model, batch).detach()
    grouped = "kv_heads" in family(name).config_keys  # grouped-query attention: heads in whole groups
    values = dict(HIDDEN_SPACE, heads=[2, 4]) if grouped else HIDDEN_SPACE
    nested = sn.nest(model, space(name, **values))
    with torch.no_grad():
        assert (output(nested, batch) - ref).abs().max().item() <= 1e-6
    exported = 0
    for subnet in nested.space.subnets()[::2]:
        sizes = nested.sizes(subnet)
        with torch.no_grad(), nested.use(subnet):
            want = output(nested, batch)
        assert torch.isfinite(want).all()
        if not exports_fewer_heads(name) and sizes["hidden"] != sizes["heads"] * nested.full["head_dim"]:
            with pytest.raises(ValueError, match=r"cannot be exported as a plain .* hidden = heads x 8"):
                nested.extract(subnet)
            continue
        small = nested.extract(subnet)
        assert getattr(small.config, nested.family.config_keys["hidden"]) == sizes["hidden"]
        with torch.no_grad():
            assert (output(small, batch) - want).abs().max().item() <= 1e-5, subnet
        assert small.num_parameters() == nested.num_params(subnet), subnet
        exported += 1
    assert exported >= 4


def test_hidden_nesting_round_trips_through_the_one_file_checkpoint(tmp_path):
    nested = sn.nest(build("gpt2"), sn.NestingSpace(**HIDDEN_SPACE))
    path = tmp_path / "h.safetensors"
    nested.save(path)
    subnet = "depth=2,hidden=24,heads=3,ffn=0.5"
    small = sn.load_submodel(path, subnet)
    batch = inputs("gpt2")
    with torch.no_grad(), nested.use(subnet):
        assert (output(small, batch) - output(nested, batch)).abs().max().item() <= 1e-5
    plain = sn.load(path).unnest()
    assert not any(type(m).__module__.startswith("sortednet") for m in plain.modules())
