"""8. Maestro rank nesting: a rank-r subnet's forward under `use()` against the same sub-model built as two
plain linear layers per factorised projection (what a two-layer export runs), and params / latency across
ranks (with the dense extracted model for reference).
"""

from __future__ import annotations

import copy

import torch
import transformers as T
from torch import nn

import sortednet as sn

from .common import Result, build, interleaved, llama_config, median, shape_text, text_batch, timed

TARGET = 1.05
RANKS = [0.125, 0.25, 0.5, 1.0]


def two_layer_model(nested: sn.NestedModel, subnet: str) -> nn.Module:
    """The extracted sub-model with each factorised projection replaced by Linear(in, r) -> Linear(r, out)."""
    small = nested.extract(subnet)
    with nested.use(subnet):
        ranks = {name: m.rank() for name, m in nested.low_rank_modules().items()}
        factors = {
            name: (m.U[:, : ranks[name]].detach(), m.V[: ranks[name]].detach())
            for name, m in nested.low_rank_modules().items()
        }
    for name, (u, v) in factors.items():
        parent_name, _, attr = name.rpartition(".")
        parent = small.get_submodule(parent_name)
        dense = getattr(parent, attr)
        first = nn.Linear(v.shape[1], v.shape[0], bias=False)
        second = nn.Linear(u.shape[1], u.shape[0], bias=dense.bias is not None)
        with torch.no_grad():
            first.weight.copy_(v)
            second.weight.copy_(u)
            if dense.bias is not None:
                second.bias.copy_(dense.bias)
        setattr(parent, attr, nn.Sequential(first, second))
    return small.eval()


def run(quick: bool) -> list[Result]:
    config = llama_config(quick)
    seq, repeats, warmup = (32, 6, 1) if quick else (128, 20, 3)
    batch_shape = (4, seq)
    batch = text_batch(config, *batch_shape, labels=None)
    nested = sn.nest(build(T.LlamaForCausalLM, config), sn.NestingSpace(rank=RANKS)).eval()
    results, rows = [], []
    for rank in RANKS:
        subnet = f"rank={rank}"
        factored, dense = two_layer_model(nested, subnet), nested.extract(subnet).eval()

        @torch.no_grad()
        def nested_forward(subnet=subnet) -> None:
            with nested.use(subnet):
                nested(**batch)

        @torch.no_grad()
        def two_layer_forward(model=factored) -> None:
            model(**batch)

        paired = interleaved(nested_forward, two_layer_forward, repeats, warmup)
        with torch.no_grad():
            dense_ms = 1e3 * median(timed(lambda m=dense: m(**batch))[0] for _ in range(repeats // 2 + 1))
        params = nested.num_params(subnet)
        rows.append(
            f"rank={rank}: {params / 1e6:.2f}M params, nested {1e3 * median(paired.a):.1f} ms, "
            f"two-layer {1e3 * median(paired.b):.1f} ms, dense {dense_ms:.1f} ms"
        )
        results.append(
            Result(
                f"rank-{rank} subnet forward / two-layer model",
                paired.ratio,
                TARGET,
                detail=paired.describe("nested", "two-layer"),
                busy=paired.busy,
            )
        )
        del factored, dense
    full = sum(p.numel() for p in copy.deepcopy(nested).unnest().parameters())
    results[-1].detail += (
        f"\n     {shape_text(config, batch_shape)}; dense model {full / 1e6:.2f}M params\n     "
        + "\n     ".join(rows)
    )
    return results
