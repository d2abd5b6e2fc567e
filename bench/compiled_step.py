"""12. `train.compile`: compiled / eager subnet train step, and the graphs compiled over 100 sandwich steps.

    python -m bench.compiled_step            # the LLaMA shape of benchmark 2 (compiling takes minutes on 2 cores)
    python -m bench.compiled_step --quick    # tiny sizes
    python -m bench.compiled_step --backend aot_eager

Step time: the nested LLaMA with its half-size subnet active, forward + backward + fused AdamW step + zero_grad,
eager against `sortednet.train.compiled.compile_model` (what `train.compile=true` runs), interleaved.

Recompiles: `Trainer.fit(SortedNetModule(compile=...))` for 100 optimizer steps of the sandwich sampler (K=3) on a
tiny LLaMA with 8 subnets (the count does not depend on the widths), reading dynamo's graph counter. One graph per
subnet the sampler drew is the design (sortednet/train/compiled.py); any graph beyond that is a recompile of a
subnet already seen, and the ratio graphs / subnets drawn (target 1.0) counts them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import transformers as T

import sortednet as sn
from sortednet.optim import NestedAdamW
from sortednet.sampling import make_sampler
from sortednet.tasks import CausalLM
from sortednet.train import SortedNetModule
from sortednet.train.compiled import compile_model, compiled_graphs

from .common import Result, build, interleaved, llama_config, setup, shape_text, text_batch

SPACE = dict(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0])
SUBNET = "depth=0.5,ffn=0.5,heads=0.5"
SANDWICH_STEPS = 100


def _step(nested: sn.NestedModel, forward: Callable[..., Any], batch) -> Callable[[], None]:
    opt = NestedAdamW(nested.parameters(), lr=1e-5)

    def step() -> None:
        with nested.use(SUBNET):
            forward(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_time(quick: bool, backend: str) -> Result:
    config = llama_config(quick)
    batch_shape = (4, 32 if quick else 128)
    eager_model = sn.nest(build(T.LlamaForCausalLM, config), sn.NestingSpace(SPACE)).train()
    compiled_model = sn.nest(build(T.LlamaForCausalLM, config), sn.NestingSpace(SPACE)).train()
    batch = text_batch(config, *batch_shape, labels="lm")
    compiled = compile_model(compiled_model.model, backend, len(compiled_model.space))
    before = compiled_graphs()
    paired = interleaved(
        _step(compiled_model, compiled, batch),
        _step(eager_model, eager_model, batch),
        *((4, 1) if quick else (10, 2)),
    )
    detail = (
        f"{shape_text(config, batch_shape)}; subnet {SUBNET}; backend {backend}; graphs compiled for it "
        f"{compiled_graphs() - before}; " + paired.describe("compiled", "eager")
    )
    return Result(f"compiled / eager subnet train step, LLaMA ({backend})", paired.ratio, 1.0, detail=detail)


def recompiles(backend: str, steps: int = SANDWICH_STEPS) -> Result:
    config = llama_config(quick=True)
    nested = sn.nest(build(T.LlamaForCausalLM, config), sn.NestingSpace(SPACE))
    batch = text_batch(config, 4, 16, labels="lm")
    sampler = make_sampler("sandwich", nested.space, k=3, seed=0)
    module = SortedNetModule(nested, CausalLM(), sampler, optim={"lr": 1e-5}, compile=backend)
    data = torch.utils.data.DataLoader([batch] * steps, batch_size=None)
    torch._dynamo.reset()
    before = compiled_graphs()
    L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
    ).fit(module, train_dataloaders=data)  # fmt: skip
    graphs = compiled_graphs() - before
    drawn = {str(s) for step in range(steps) for s in sampler.sample(step, 0)}
    detail = (
        f"{steps} optimizer steps, sandwich K=3 over {len(nested.space)} subnets, {len(drawn)} drawn; graphs "
        f"compiled {graphs}, recompiles of a subnet already compiled {graphs - len(drawn)} (backend {backend})"
    )
    return Result(
        f"graphs compiled / subnets drawn over {steps} sandwich steps",
        graphs / len(drawn),
        1.0,
        detail=detail,
    )


def run(quick: bool, backend: str = "inductor") -> list[Result]:
    return [recompiles(backend, 20 if quick else SANDWICH_STEPS), step_time(quick, backend)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks that it runs)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    args = parser.parse_args(argv)
    setup()
    for result in run(args.quick, args.backend):
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
