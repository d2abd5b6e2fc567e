"""2. Subnet train step: the nested model with a half-size subnet active against a dense model of that shape.

The dense model is `nested.extract(subnet)`: a plain transformers model whose config has exactly the
subnet's sizes. LLaMA halves depth, FFN and heads. BERT halves depth and FFN only: its head size is
hidden / heads, so a BERT with fewer heads cannot be built as a plain BertModel (transformers 5 has no
head pruning), and there is no dense model to compare with.
"""

from __future__ import annotations

import torch
import transformers as T

import sortednet as sn

from .common import Result, bert_config, build, interleaved, llama_config, shape_text, text_batch, train_step
from .diagnose import explain_train_step

TARGET = 1.10


def grad_elements(model: torch.nn.Module, batch) -> int:
    """Elements that get a gradient (and so are updated by AdamW) in one step."""
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    count = sum(p.grad.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return count


def _case(
    name: str, cls: type, config, space: sn.NestingSpace, subnet: str, labels: str, batch_shape, quick: bool
) -> Result:
    nested = sn.nest(build(cls, config), space)
    dense = nested.extract(subnet)
    nested.activate(subnet)
    shape = {
        k: getattr(dense.config, k) for k in ("num_hidden_layers", "intermediate_size", "num_attention_heads")
    }
    batch = text_batch(config, *batch_shape, labels=labels)
    step_nested, step_dense = train_step(nested, batch), train_step(dense, batch)
    repeats, warmup = (4, 1) if quick else (16, 2)
    paired = interleaved(step_nested, step_dense, repeats, warmup)
    detail = (
        f"full model {shape_text(config, batch_shape)}; subnet {subnet} = dense {shape}; "
        + paired.describe("nested", "dense")
    )
    result = Result(
        f"subnet train step / dense, {name}", paired.ratio, TARGET, detail=detail, busy=paired.busy
    )
    if result.status == "MISS":
        result.detail += explain_train_step(
            nested, step_nested, dense, step_dense, batch, ("nested", "dense"), 5
        )
        gn, gd = grad_elements(nested, batch), grad_elements(dense, batch)
        result.detail += (
            f"\n     elements with a gradient (AdamW updates them): nested {gn / 1e6:.1f}M vs dense {gd / 1e6:.1f}M"
            f" (the subnet has {nested.num_params(subnet) / 1e6:.1f}M parameters)"
        )
    return result


def run(quick: bool) -> list[Result]:
    seq = 32 if quick else 128
    half = sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0])
    return [
        _case(
            "LLaMA, 1/2 depth, 1/2 FFN, 1/2 heads",
            T.LlamaForCausalLM,
            llama_config(quick),
            half,
            "depth=0.5,ffn=0.5,heads=0.5",
            "lm",
            (4, seq),
            quick,
        ),
        _case(
            "BERT, 1/2 depth, 1/2 FFN (heads not exportable)",
            T.BertForSequenceClassification,
            bert_config(quick),
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0]),
            "depth=0.5,ffn=0.5",
            "class",
            (8, seq),
            quick,
        ),
    ]
