"""Every causal-LM sub-model generates under use() with the KV cache, token for token as its extracted model."""

import pytest
import torch
from tiny import build, inputs

import sortednet as sn

SPACE = sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4])
DECODERS = ["gpt2", "llama", "qwen2", "mistral"]


def prompts(alone: bool):
    """Two prompts of different lengths (left padding, as decoders generate); with `alone`, one more by itself."""
    two = inputs("llama", batch=2, seq=9, seed=3)["input_ids"]
    mask = torch.ones_like(two)
    two[0, :4], mask[0, :4] = 0, 0
    batches = [{"input_ids": two, "attention_mask": mask}]
    return batches + [{"input_ids": inputs("llama", batch=1, seq=7)["input_ids"]}] if alone else batches


@pytest.mark.slow
@pytest.mark.parametrize("name", DECODERS)
def test_every_subnet_generates_as_its_extracted_model(name):
    nested = sn.nest(build(name), SPACE)
    checked = 0
    for subnet in nested.space.subnets():
        if name == "gpt2" and nested.sizes(subnet)["heads"] < 4:
            continue  # GPT-2's fewer-heads subnets do not export (head size from hidden / heads)
        small = nested.extract(subnet)
        for prompt in prompts(alone=checked == 0):  # the smallest subnet checked
            kwargs = dict(max_new_tokens=12, do_sample=False, use_cache=True, pad_token_id=0)
            with torch.no_grad(), nested.use(subnet):
                got = nested.generate(**prompt, **kwargs)
            want = small.generate(**prompt, **kwargs)
            assert torch.equal(got, want), (subnet, prompt["input_ids"].shape)
            checked += 1
    assert checked == (5 if name == "gpt2" else 9)
    assert nested.active == nested.space.normalize(nested.space.largest)
