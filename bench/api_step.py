"""16. The Python API's train step: a sub-model trained through `use()` with `sn.optimizer` against the dense
model of that shape with torch's fused AdamW, side by side in one run.

torch's AdamW steps every tensor a subnet touched at full size (the slice-aware backward leaves zeros outside
the slice, and AdamW still moves and decays them); `sn.optimizer` (update="touched", sortednet-train's
`optim.update=touched` path) steps only the rows and columns the subnet read. Also shown: the same step with
`sn.optimizer(update="all")` and with torch's default AdamW on both sides (what a user writing
`torch.optim.AdamW(nested.parameters())` gets).

    python -m bench.api_step            # LLaMA, hidden 1024, 4 layers; subnet: half depth, FFN and heads
    python -m bench.api_step --quick    # tiny sizes: checks that it runs
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import transformers as T

import sortednet as sn

from .common import Result, build, interleaved, llama_config, setup, shape_text, text_batch

TARGET = 1.05
SUBNET = "depth=0.5,ffn=0.5,heads=0.5"
SPACE = sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0])


def step_with(model: torch.nn.Module, batch: dict, opt: torch.optim.Optimizer) -> Callable[[], None]:
    model.train()

    def step() -> None:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run(quick: bool) -> list[Result]:
    config = llama_config(quick)
    shape = (4, 32 if quick else 128)
    batch = text_batch(config, *shape, labels="lm")
    repeats, warmup = (4, 1) if quick else (16, 2)
    results = []
    cases = [
        ("sn.optimizer(update='touched')", "touched", True, TARGET),
        ("sn.optimizer(update='all')", "all", True, float("inf")),
        ("torch.optim.AdamW() on both sides, not fused", None, False, float("inf")),
    ]
    for label, update, fused_dense, target in cases:
        nested = sn.nest(build(T.LlamaForCausalLM, config), SPACE)
        dense = nested.extract(SUBNET)
        nested.activate(SUBNET)
        opt = (
            sn.optimizer(nested, lr=1e-5, update=update)
            if update
            else torch.optim.AdamW(nested.parameters(), lr=1e-5)
        )
        dense_opt = torch.optim.AdamW(dense.parameters(), lr=1e-5, fused=fused_dense or None)
        paired = interleaved(
            step_with(nested, batch, opt), step_with(dense, batch, dense_opt), repeats, warmup
        )
        dense_text = "dense with fused AdamW" if fused_dense else "dense with torch's default AdamW"
        results.append(
            Result(
                f"subnet train step, {label} / {dense_text}",
                paired.ratio,
                target,
                detail=f"{shape_text(config, shape)}; subnet {SUBNET}; " + paired.describe("nested", "dense"),
                busy=paired.busy,
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (checks it runs)")
    args = parser.parse_args()
    setup()
    for result in run(args.quick):
        print(result.line(), flush=True)


if __name__ == "__main__":
    main()
