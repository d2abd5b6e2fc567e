"""head="per_depth": each depth reads through its own head copy; a sub-model counts, saves, loads and exports only
its own, as a plain transformers model that predicts what use() predicts."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from test_pooling import by_hand
from tiny import build, exports_fewer_heads, inputs, output, space

import sortednet as sn

NAMES = ["bert", "roberta", "vit", "llama", "distilbert", "gpt2_untied"]


def make(name: str):
    if name == "gpt2_untied":
        torch.manual_seed(0)
        config = T.GPT2Config(
            vocab_size=64, n_embd=32, n_layer=4, n_head=4, n_positions=32, tie_word_embeddings=False
        )
        return "gpt2", T.GPT2LMHeadModel(config).eval()
    return name, build(name)


def nested_with_distinct_heads(name: str, **kw):
    family_name, model = make(name)
    hidden = {"hidden": [24, 32]} if exports_fewer_heads(family_name) else {}
    nested = sn.nest(
        model, space(family_name, depth=[2, 4], ffn=[0.5, 1.0], **hidden), head="per_depth", **kw
    )
    torch.manual_seed(1)
    with torch.no_grad():  # copies start equal to the original head: make them differ
        for key, p in nested.named_parameters():
            if ".depth_heads." in key:
                p.add_(torch.randn_like(p) * 0.5)
    return family_name, nested


@pytest.mark.parametrize("name", NAMES)
def test_each_depth_runs_its_own_head_and_exports_it(name):
    family_name, nested = nested_with_distinct_heads(name)
    batch = inputs(family_name)
    shared_family, shared = make(name)
    shared = sn.nest(shared, nested.space.to_dict())
    with torch.no_grad():
        for subnet in nested.space.subnets():
            with nested.use(subnet):
                got = output(nested, batch)
            plain = nested.extract(subnet)
            assert (got - output(plain, batch)).abs().max().item() <= 1e-5, subnet
            assert sum(p.numel() for p in plain.parameters()) == nested.num_params(subnet), subnet
            assert nested.num_params(subnet) == shared.num_params(subnet), subnet
            if nested.sizes(subnet)["depth"] == 2:  # not the original head
                with shared.use(subnet):
                    assert (got - output(shared, batch)).abs().max().item() > 1e-3, subnet


def test_save_load_and_load_submodel_keep_every_head(tmp_path):
    _, nested = nested_with_distinct_heads("bert")
    path = tmp_path / "model.safetensors"
    nested.save(str(path))
    loaded = sn.load(path)
    batch = inputs("bert")
    assert loaded.options["head"] == "per_depth"
    with torch.no_grad():
        for subnet in nested.space.subnets():
            with nested.use(subnet), loaded.use(subnet):
                want = output(nested, batch)
                assert torch.equal(want, output(loaded, batch)), subnet
            plain = sn.load_submodel(path, subnet)
            assert (want - output(plain, batch)).abs().max().item() <= 1e-5, subnet
            assert not any(".depth_heads." in k for k in plain.state_dict())


def test_mean_pooling_with_a_head_per_depth_is_exact():
    _, nested = nested_with_distinct_heads("bert", pooling="mean")
    batch = inputs("bert")
    with torch.no_grad():
        for subnet in ("depth=2,ffn=0.5", "depth=4,ffn=1.0"):
            with nested.use(subnet):
                got = nested(**batch).logits
            assert (got - by_hand(nested.extract_plain(subnet), batch)).abs().max().item() <= 1e-5, subnet


def test_only_the_active_depth_head_gets_a_gradient():
    _, nested = nested_with_distinct_heads("bert")
    with nested.use("depth=2,ffn=0.5"):
        output(nested, inputs("bert")).sum().backward()
    heads = {k: p for k, p in nested.named_parameters() if "classifier" in k or "pooler" in k}
    grads = {k for k, p in heads.items() if p.grad is not None}
    assert {"model.classifier.depth_heads.2.weight", "model.classifier.depth_heads.2.bias"} <= grads, grads
    assert all(".depth_heads.2." in k for k in grads), grads  # no other depth's head, not the full one


def test_unnest_gives_the_plain_model_with_the_largest_depth_head():
    _, nested = nested_with_distinct_heads("bert")
    batch = inputs("bert")
    with torch.no_grad():
        want = output(nested, batch)
        plain = nested.unnest()
        assert type(plain) is T.BertForSequenceClassification
        assert torch.equal(want, output(plain, batch))


def test_tied_heads_and_spaces_without_depth_are_refused():
    with pytest.raises(ValueError, match=r"^model.head='per_depth': the head shares its weight with .*tied"):
        sn.nest(build("gpt2"), {"depth": [2, 4]}, head="per_depth")
    with pytest.raises(ValueError, match=r"^model.head='per_depth' needs a nesting space over depth"):
        sn.nest(build("bert"), {"ffn": [0.5, 1.0]}, head="per_depth")
    with pytest.raises(ValueError, match=r"^model.head='each' is unknown; allowed: shared, per_depth$"):
        sn.nest(build("bert"), {"depth": [2, 4]}, head="each")
