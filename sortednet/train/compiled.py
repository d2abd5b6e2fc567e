"""`train.compile`: the training forward (and its backward) through torch.compile, one graph per subnet.

Switching a subnet sets Python ints (`NestState`, GPT-2's `split_size`) and depth is the length of a Python loop,
so dynamo guards on those ints and compiles one graph per subnet the first time the sampler draws it; afterwards
a switch is a guard lookup, not a recompile. Depth cannot be a symbolic size (it decides which modules run), and
symbolic widths would trade every kernel's static shapes for one graph per depth, so the cache is per subnet:
dynamo's recompile limits (8 per code object by default, after which it silently runs eager) are raised to cover
every subnet of the space. The sliced projections take autograd's slice gradient inside the graph (see
`sortednet.slice_grad`: the in-place `.grad` accumulation is a side effect dynamo cannot trace).

Only training steps run compiled; validation and the final table run the same modules eagerly, so the graphs
are those of training (grad mode, train mode) alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

DEFAULT_BACKEND = "inductor"


def compile_backend(value: Any) -> str | None:
    """`train.compile`: false (off), true (inductor) or a torch.compile backend's name (`aot_eager`: dynamo and
    AOTAutograd without code generation, for checks); the backend to use, or None."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_BACKEND
    if isinstance(value, str):
        import torch._dynamo

        names = torch._dynamo.list_backends(exclude_tags=())
        if value in names:
            return value
        allowed = ", ".join(sorted(set(names) & {"inductor", "aot_eager", "eager", "cudagraphs"}))
        raise ValueError(
            f"train.compile={value!r} is not a torch.compile backend; allowed: true, false, {allowed}"
        )
    raise ValueError(
        f"train.compile={value!r} is not allowed; allowed: true, false or a torch.compile backend name"
    )


def check_compile(backend: str | None, rank_sampling: str | None) -> None:
    """Combinations that would recompile on most steps, refused before anything is built."""
    if backend and rank_sampling == "per_layer":
        raise ValueError(
            "train.compile=true with train.rank.sampling=per_layer would recompile on most steps (every factorised "
            "layer draws its own rank each micro-batch, a new graph each time); allowed with train.compile: "
            "train.rank.sampling=per_model"
        )


def raise_recompile_limits(graphs: int) -> int:
    """Let dynamo keep `graphs` graphs per compiled frame (and 8x that in all) before it gives up; the new
    per-frame limit. Global dynamo settings: they are only raised, never lowered."""
    import torch._dynamo.config as config

    per_frame = max(config.recompile_limit, graphs + 8)  # + a few for input shapes (a shorter last batch)
    config.recompile_limit = per_frame
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 8 * per_frame)
    return per_frame


def compile_model(model: nn.Module, backend: str, subnets: int) -> Callable[..., Any]:
    """`model`'s call, compiled with one graph per subnet (`subnets`: how many the space holds). A callable, not
    a module: the module's own parameters and state-dict keys stay as they are (no `_orig_mod.` prefix)."""
    raise_recompile_limits(subnets)
    return torch.compile(model, backend=backend).__call__


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (every recompile is one more)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
