"""5. Space enumeration: 12 depths x 16 FFN sizes x 12 head counts = 2304 subnets, ordered by exact cost.

The space is bound to a 12-layer, 12-head LLaMA with 12 kv heads (so every head count keeps whole
grouped-query groups). Each timed call gets a fresh copy of the bound space, so nothing is cached.
"""

from __future__ import annotations

import copy
import time

import transformers as T

import sortednet as sn

from .common import Result, build, median

TARGET_MS = 50.0


def _space() -> sn.NestingSpace:
    return sn.NestingSpace(
        depth=list(range(1, 13)), ffn=[4 * i for i in range(1, 17)], heads=list(range(1, 13))
    )


def _ms(fn, spaces: list[sn.NestingSpace]) -> list[float]:
    times = []
    for space in spaces:
        start = time.perf_counter()
        fn(space)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def run(quick: bool) -> list[Result]:
    config = T.LlamaConfig(
        hidden_size=48,
        num_attention_heads=12,
        num_key_value_heads=12,
        intermediate_size=64,
        num_hidden_layers=12,
        vocab_size=256,
    )
    nested = sn.nest(build(T.LlamaForCausalLM, config), _space())
    bound = nested.space
    repeats = 5 if quick else 30
    assert len(bound) == 2304

    enum = _ms(lambda s: s.subnets(), [copy.deepcopy(bound) for _ in range(repeats)])
    unbound = _ms(lambda s: s.subnets(), [_space() for _ in range(repeats)])
    sample_fresh = _ms(lambda s: s.sample(1000, 0), [copy.deepcopy(bound) for _ in range(repeats)])
    bound.subnets()
    sample_warm = _ms(lambda s: s.sample(1000, 0), [bound] * repeats)
    ordered = bound.subnets()
    costs = bound.costs()
    assert len(ordered) == 2304 and (costs[1:] >= costs[:-1]).all(), "subnets() must come cheapest first"
    assert ordered[-1] == bound.largest and ordered[0] == bound.smallest
    return [
        Result(
            "enumerate + order 2304 subnets (fresh bound space)",
            median(enum),
            TARGET_MS,
            unit="ms",
            detail=f"median of {repeats}; unbound space (size proxy) {median(unbound):.2f} ms",
        ),
        Result(
            "sample 1000 of 2304 subnets (fresh bound space)",
            median(sample_fresh),
            TARGET_MS,
            unit="ms",
            detail=f"includes the first ordering; on an already ordered space {median(sample_warm):.2f} ms",
        ),
    ]
