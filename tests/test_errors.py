"""Bad input that only a model can reveal fails before anything changes, in one line naming the field."""

import pytest
import torch
import transformers as T
from tiny import build

import sortednet as sn


@pytest.mark.parametrize(
    "name, space, message",
    [
        (
            "llama",
            dict(heads=[2, 8]),
            r"heads=8 exceeds the model's 4 attention heads; allowed: 1..4 or a fraction",
        ),
        ("bert", dict(depth=[2, 6]), r"depth=6 exceeds the model's 4 layers; allowed: 1..4"),
        ("gpt2", dict(ffn=[256]), r"ffn=256 exceeds the model's 128 FFN neurons"),
        (
            "llama",
            dict(heads=[1, 4]),
            r"heads=1 \(1 heads\) cannot keep grouped-query attention groups whole: .* "
            r"4 query heads over 2 kv heads; allowed: multiples of 2",
        ),
        (
            "qwen2",
            dict(heads=[0.25, 1.0]),
            r"heads=0.25 \(1 heads\) cannot keep grouped-query attention groups whole",
        ),
        (
            "bert",
            dict(channels=[16, 32]),
            r"dimension 'channels' cannot be nested for model family 'bert'; it supports: depth, heads, ffn, hidden",
        ),
        ("llama", dict(hidden=[16, 64]), r"hidden=64 exceeds the model's 32 hidden size"),
        ("vit", dict(channels=[4]), r"dimension 'channels' cannot be nested for model family 'vit'"),
        ("llama", dict(depth=[0.1, 1.0]), r"depth=0.1 of 4 layers rounds to 0"),
        ("llama", dict(ffn=[0.5, 24]), r"mixes fractions and absolute sizes"),
        ("llama", dict(depth=[0.5, 2]), r"mixes fractions"),
        (
            "llama",
            dict(depth=[0.5, 0.6]),
            r"depth=\[0.5, 0.6\] names the same size twice \(\[2, 2\] for this model\)",
        ),
    ],
)
def test_bad_space_for_model(name, space, message):
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules_before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=message) as err:
        sn.nest(model, sn.NestingSpace(**space) if "mixes" not in message else space)
    assert "\n" not in str(err.value)
    assert [type(m) for m in model.modules()] == modules_before  # nothing injected
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_family_lists_the_supported_ones():
    config = T.OlmoConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    model = T.OlmoModel(config)
    with pytest.raises(ValueError) as err:
        sn.nest(model, sn.NestingSpace(depth=[1]))
    msg = str(err.value)
    assert "model family 'olmo' (config.model_type) is not supported" in msg
    assert (
        "bert, convnext, deberta-v2, deit, distilbert, gemma, gemma2, gemma3_text, gpt2, llama, mistral, phi3, "
        "qwen2, qwen3, resnet, roberta, swin, swinv2, vit, xlm-roberta;" in msg
    )
    assert "sortednet.check_family" in msg and "sortednet.families.register" in msg


def test_not_a_transformers_model():
    with pytest.raises(ValueError, match="nest\\(\\) takes a transformers PreTrainedModel; got Linear"):
        sn.nest(torch.nn.Linear(2, 2), sn.NestingSpace(depth=[1]))


def test_nesting_twice_is_refused():
    nested = sn.nest(build("llama"), sn.NestingSpace(depth=[2, 4]))
    with pytest.raises(ValueError, match="already nested"):
        sn.nest(nested, sn.NestingSpace(depth=[2, 4]))
    with pytest.raises(ValueError, match="already nested"):
        sn.nest(nested.model, sn.NestingSpace(depth=[2, 4]))


@pytest.mark.parametrize(
    "subnet, message",
    [
        ("depth=3", r"subnet depth=3 is not in the nesting space; allowed: 2, 4"),
        ("ffn=0.25", r"subnet ffn=0.25 is not in the nesting space; allowed: 0.5, 1.0"),
        (
            "heads=2",
            r"subnet 'heads'|sets 'heads', which this nesting space does not nest; nested dimensions: depth, ffn",
        ),
        ("depth=2,ffn=7.0", r"ffn=7.0 is outside \(0, 1\]"),
    ],
)
def test_subnet_outside_the_space(subnet, message):
    nested = sn.nest(build("llama"), sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0]))
    with pytest.raises(ValueError, match=message):
        nested.activate(subnet)
    with pytest.raises(ValueError, match=message):
        nested.extract(subnet)
    assert str(nested.active) == "depth=4,ffn=1.0"


def test_absolute_and_fractional_spellings_name_the_same_subnet():
    nested = sn.nest(build("llama"), sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0]))
    assert nested.activate("ffn=24,depth=2") == sn.Subnet(depth=2, ffn=0.5)
