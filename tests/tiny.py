"""Tiny random models of every supported family (built with from_config, nothing downloaded), inputs, and the
switching check the family tests share."""

from __future__ import annotations

import functools

import torch
import transformers as T

import sortednet as sn
from sortednet.families import Family, family_for

VOCAB = 64


def _text(**kw):
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        **kw,
    )


_TOKENS = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0)
# sliding windows shorter than the inputs, and both attention kinds within the first two layers
_SLIDING = dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"] * 2)
_GEMMA = dict(num_key_value_heads=2, head_dim=8, **_SLIDING)
# DeBERTa-v3's attention: relative positions in buckets, shared keys, both disentangled terms
DEBERTA_V3 = dict(
    relative_attention=True,
    pos_att_type=["p2c", "c2p"],
    position_buckets=8,
    share_att_key=True,
    norm_rel_ebd="layer_norm",
)


def _image(**kw):
    return dict(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=5,
        **kw,
    )


BUILDERS = {
    "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**_text(num_labels=3))),
    "bert_base": lambda: T.BertModel(T.BertConfig(**_text())),
    "roberta": lambda: T.RobertaForSequenceClassification(
        T.RobertaConfig(**_text(num_labels=3, pad_token_id=1, max_position_embeddings=40))
    ),
    "gpt2": lambda: T.GPT2LMHeadModel(
        T.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
        )
    ),
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**_text(num_key_value_heads=2))),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**_text(num_key_value_heads=2))),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(**_text(num_key_value_heads=2))),
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(**_image())),
    "deit": lambda: T.DeiTForImageClassification(T.DeiTConfig(**_image())),
    "xlm-roberta": lambda: T.XLMRobertaForSequenceClassification(
        T.XLMRobertaConfig(**_text(num_labels=3, pad_token_id=1, max_position_embeddings=40))
    ),
    "qwen3": lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**_text(num_key_value_heads=2, head_dim=8))),
    "phi3": lambda: T.Phi3ForCausalLM(T.Phi3Config(**_text(num_key_value_heads=2, **_TOKENS))),
    "gemma": lambda: T.GemmaForCausalLM(T.GemmaConfig(**_text(num_key_value_heads=2, head_dim=8))),
    "gemma2": lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**_text(**_GEMMA))),
    "gemma3_text": lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**_text(**_GEMMA))),
    "distilbert": lambda: T.DistilBertForSequenceClassification(
        T.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=48, num_labels=3)
    ),
    "deberta-v2": lambda: T.DebertaV2ForSequenceClassification(
        T.DebertaV2Config(**_text(num_labels=3, pooler_hidden_size=32, **DEBERTA_V3))
    ),
}
FAMILIES = list(BUILDERS)  # the transformer families; the convolutional ones are below


# 16x16 pixels: 8x8, 4x4, 2x2 patches, windows of 2 (Swin needs every stage at least a window wide)
_SWIN = dict(
    image_size=16,
    patch_size=2,
    num_channels=1,
    num_labels=10,
    embed_dim=16,
    depths=[2, 1, 3],
    num_heads=[2, 2, 4],
    window_size=2,
    mlp_ratio=2.0,
)


def _stages(**kw):
    return dict(num_channels=1, num_labels=10, hidden_sizes=[8, 16, 32], depths=[2, 1, 2], **kw)


STAGE_BUILDERS = {
    "resnet": lambda: T.ResNetForImageClassification(
        T.ResNetConfig(embedding_size=8, layer_type="basic", **_stages())
    ),
    "resnet-bottleneck": lambda: T.ResNetForImageClassification(  # a bottleneck is a quarter of its block
        T.ResNetConfig(
            num_channels=1, num_labels=10, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[2, 1, 2]
        )
    ),
    "convnext": lambda: T.ConvNextForImageClassification(
        T.ConvNextConfig(num_stages=3, patch_size=2, **_stages())
    ),
    "swin": lambda: T.SwinForImageClassification(T.SwinConfig(**_SWIN)),
    "swinv2": lambda: T.Swinv2ForImageClassification(T.Swinv2Config(**_SWIN)),
}

# check_family's tiny config for these model types (their defaults would leave a feature unexercised)
CHECK_OVERRIDES = {
    "gemma2": _SLIDING,
    "gemma3_text": _SLIDING,
    "deberta-v2": DEBERTA_V3,
}


@functools.cache
def family(name: str) -> Family:
    return family_for(BUILDERS[name]().config)


def space(name: str, **dims) -> sn.NestingSpace:
    """The nesting space of `dims` that the family of `name` supports."""
    supported = family(name).dims
    return sn.NestingSpace({d: v for d, v in dims.items() if d in supported})


def exports_fewer_heads(name: str) -> bool:
    """The family writes the head size into the config, so fewer-heads sub-models export."""
    return family(name).head_dim_in_config


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


def inputs(name: str, batch: int = 2, seq: int = 9, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if name in ("vit", "deit"):
        return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g)}
    ids = torch.randint(2, VOCAB, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # padding exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def output(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    return out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state


def digits_vit(layers: int = 3, ffn: int = 64, seed: int = 0) -> T.ViTForImageClassification:
    """A tiny ViT for scikit-learn's 8x8 digits (10 classes), dropout off."""
    torch.manual_seed(seed)
    config = T.ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=ffn,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return T.ViTForImageClassification(config)


def assert_switching_copies_nothing(nested: sn.NestedModel, rounds: int = 2) -> None:
    """Cycling through every subnet leaves each parameter's storage and shape alone and allocates nothing."""
    before = [(p.data_ptr(), p.shape) for p in nested.parameters()]
    for subnet in nested.space.subnets() * rounds:
        nested.activate(subnet)
    assert [(p.data_ptr(), p.shape) for p in nested.parameters()] == before
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        for subnet in nested.space.subnets():
            nested.activate(subnet)
    assert sum(e.cpu_memory_usage for e in prof.key_averages() if e.cpu_memory_usage > 0) == 0


def llama4(**extra) -> T.LlamaForCausalLM:
    """A 4-layer LLaMA (hidden 32, 4 heads of 8, 2 kv heads, FFN 64, vocabulary 64), seeded, in eval mode."""
    config = T.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return T.LlamaForCausalLM(config).eval()
