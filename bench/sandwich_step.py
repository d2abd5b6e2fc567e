"""11. Sandwich step: one optimizer step of nested training (largest + smallest + 1 random subnet) / the sum of
the three dense models' steps, each `nested.extract(subnet)` with its own fused AdamW.

    python -m bench.sandwich_step            # LLaMA and BERT shapes of benchmark 2
    python -m bench.sandwich_step --quick    # tiny sizes: checks that it runs

The nested side is `sortednet-train`'s own step: `Trainer.fit(SortedNetModule)` with the sandwich sampler (K=3),
NestedAdamW (fused), gradient clipping at 1.0 and the NaN guard, timed from `on_train_batch_start` to
`on_train_batch_end`. The dense side runs, inside the same fit, the step's three subnets as plain models (forward,
backward, clip at 1.0, fused AdamW, zero_grad), before the nested step on odd steps and after it on even ones.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
import transformers as T

import sortednet as sn
from sortednet.sampling import make_sampler
from sortednet.tasks import CausalLM, Classification
from sortednet.train import SortedNetModule

from .common import (
    BUSY,
    Call,
    Paired,
    Result,
    bert_config,
    build,
    llama_config,
    setup,
    shape_text,
    text_batch,
)

TARGET = 1.05


class DenseSteps:
    """Each subnet's extracted model with its own AdamW, made the first time the sampler draws the subnet."""

    def __init__(self, nested: sn.NestedModel, batch: dict[str, torch.Tensor]) -> None:
        self.nested, self.batch, self.models = nested, batch, {}

    def _step(self, subnet) -> None:
        if subnet not in self.models:
            model = self.nested.extract(subnet).train()
            self.models[subnet] = (model, torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True))
        model, opt = self.models[subnet]
        model(**self.batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(self, subnets) -> Call:
        for subnet in subnets:  # first use: extract and warm up, untimed
            if subnet not in self.models:
                self._step(subnet)
        wall, cpu = time.perf_counter(), time.process_time()
        for subnet in subnets:
            self._step(subnet)
        return Call(time.perf_counter() - wall, time.process_time() - cpu)


class PairTimer(L.Callback):
    """Times each nested training step and, beside it, the dense steps of the same three subnets."""

    def __init__(self, dense: DenseSteps, warmup: int) -> None:
        self.dense, self.warmup = dense, warmup
        self.pairs: list[tuple[Call, Call]] = []
        self._before: Call | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        subnets = module.sampler.sample(module.global_step, 0)
        self._before = self.dense.timed(subnets) if batch_idx % 2 else None
        self._clock = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        nested = Call(time.perf_counter() - self._clock[0], time.process_time() - self._clock[1])
        dense = self._before or self.dense.timed(module.sampler.sample(module.global_step - 1, 0))
        if batch_idx >= self.warmup:
            self.pairs.append((nested, dense))


def measure(nested: sn.NestedModel, task, batch: dict[str, torch.Tensor], steps: int, warmup: int) -> Paired:
    nested.train()
    module = SortedNetModule(
        nested, task, make_sampler("sandwich", nested.space, k=3, seed=0), optim={"lr": 1e-5}, grad_clip=1.0
    )
    timer = PairTimer(DenseSteps(nested, {k: v for k, v in batch.items()}), warmup)
    data = torch.utils.data.DataLoader([batch] * (steps + warmup), batch_size=None)
    L.Trainer(
        max_steps=steps + warmup, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[timer],
    ).fit(module, train_dataloaders=data)  # fmt: skip
    clean = [p for p in timer.pairs if min(p[0].utilisation, p[1].utilisation) >= BUSY]
    if len(clean) >= max(3, len(timer.pairs) // 2):
        return Paired(clean, dropped=len(timer.pairs) - len(clean))
    return Paired(timer.pairs)


def cases(quick: bool):
    seq = 32 if quick else 128
    return [
        (
            "LLaMA",
            T.LlamaForCausalLM,
            llama_config(quick),
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0]),
            CausalLM(),
            "lm",
            (4, seq),
        ),
        (
            "BERT (depth, FFN: fewer heads do not export)",
            T.BertForSequenceClassification,
            bert_config(quick),
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0]),
            Classification(),
            "class",
            (8, seq),
        ),
    ]


def run(quick: bool) -> list[Result]:
    steps, warmup = (4, 1) if quick else (12, 2)
    results = []
    for name, cls, config, space, task, labels, batch_shape in cases(quick):
        nested = sn.nest(build(cls, config), space)
        batch = text_batch(config, *batch_shape, labels=labels)
        paired = measure(nested, task, batch, steps, warmup)
        detail = (
            f"{shape_text(config, batch_shape)}; space {space}, sandwich K=3, clip 1.0, fused AdamW on both sides; "
            + paired.describe("nested step", "three dense steps")
        )
        results.append(
            Result(
                f"sandwich step / 3 dense steps, {name}",
                paired.ratio,
                TARGET,
                detail=detail,
                busy=paired.busy,
            )
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps (checks that it runs)")
    args = parser.parse_args(argv)
    setup()
    for result in run(args.quick):
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
