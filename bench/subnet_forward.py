"""3. Subnet forward: the nested model under `use(subnet)` against `extract(subnet)` (eval, no_grad).

The nested side includes entering and leaving `use()`, i.e. two switches per forward.
"""

from __future__ import annotations

import transformers as T

import sortednet as sn

from .common import (
    Result,
    bert_config,
    build,
    forward_calls,
    interleaved,
    llama_config,
    shape_text,
    text_batch,
)
from .diagnose import ops_diff, top_ops

TARGET = 1.05


def _case(
    name: str, cls: type, config, space: sn.NestingSpace, subnet: str, batch_shape, quick: bool
) -> Result:
    nested = sn.nest(build(cls, config), space).eval()
    small = nested.extract(subnet).eval()
    batch = text_batch(config, *batch_shape, labels=None)

    nested_forward, small_forward = forward_calls(nested, subnet, small, batch)
    repeats, warmup = (6, 1) if quick else (30, 3)
    paired = interleaved(nested_forward, small_forward, repeats, warmup)
    result = Result(
        f"subnet forward / extracted, {name}",
        paired.ratio,
        TARGET,
        detail=f"full model {shape_text(config, batch_shape)}; " + paired.describe("nested", "extracted"),
        busy=paired.busy,
    )
    if result.status == "MISS":
        result.detail += (
            f"\n     most extra self time: {ops_diff(top_ops(nested_forward, 5), top_ops(small_forward, 5))}"
        )
    return result


def run(quick: bool) -> list[Result]:
    seq = 32 if quick else 128
    return [
        _case(
            "LLaMA, 1/2 depth, 1/2 FFN, 1/2 heads",
            T.LlamaForCausalLM,
            llama_config(quick),
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0]),
            "depth=0.5,ffn=0.5,heads=0.5",
            (8, seq),
            quick,
        ),
        _case(
            "BERT, 1/2 depth, 1/2 FFN",
            T.BertForSequenceClassification,
            bert_config(quick),
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0]),
            "depth=0.5,ffn=0.5",
            (8, seq),
            quick,
        ),
    ]
