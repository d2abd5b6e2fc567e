"""1. Nesting tax: a full-size nested train step against the same model un-nested.

Two identical copies are built from one config and seed; one is nested (wrappers on every projection,
the largest subnet active), the other is left alone. Each train step is forward + backward + AdamW step,
timed alternately on the two copies.
"""

from __future__ import annotations

import transformers as T

import sortednet as sn

from .common import Result, bert_config, build, interleaved, llama_config, shape_text, text_batch, train_step
from .diagnose import explain_train_step

TARGET = 1.03


def _case(
    name: str, cls: type, config, space: sn.NestingSpace, labels: str, batch_shape, quick: bool
) -> Result:
    plain = build(cls, config)
    nested = sn.nest(build(cls, config), space)
    nested.activate(nested.space.largest)
    batch = text_batch(config, *batch_shape, labels=labels)
    step_nested, step_plain = train_step(nested, batch), train_step(plain, batch)
    repeats, warmup = (4, 1) if quick else (16, 2)
    paired = interleaved(step_nested, step_plain, repeats, warmup)
    detail = paired.describe("nested", "plain")
    result = Result(
        f"nesting tax, train step, {name} ({shape_text(config, batch_shape)})",
        paired.ratio,
        TARGET,
        detail=detail,
        busy=paired.busy,
    )
    if result.status == "MISS":
        result.detail += explain_train_step(
            nested, step_nested, plain, step_plain, batch, ("nested", "plain")
        )
    return result


def run(quick: bool) -> list[Result]:
    bert = bert_config(quick)
    llama = llama_config(quick)
    seq = 32 if quick else 128
    return [
        _case(
            "BERT",
            T.BertForSequenceClassification,
            bert,
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0]),
            "class",
            (8, seq),
            quick,
        ),
        _case(
            "LLaMA",
            T.LlamaForCausalLM,
            llama,
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0]),
            "lm",
            (4, seq),
            quick,
        ),
    ]
