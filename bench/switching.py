"""4. `activate()`: time per switch, and proof that switching allocates and moves no weights.

GPT-2 is used because it does the most per switch (besides the shared sizes, every layer's attention
gets its `split_size` set). Timing cycles through every subnet of a 64-subnet space, one call at a time.
"""

from __future__ import annotations

import time

import torch
import transformers as T
from torch.profiler import ProfilerActivity, profile

import sortednet as sn

from .common import Result, build, median

TARGET_US = 100.0


def _model() -> T.GPT2LMHeadModel:
    config = T.GPT2Config(
        n_embd=96, n_layer=12, n_head=12, n_positions=64, vocab_size=256, bos_token_id=0, eos_token_id=0
    )
    return build(T.GPT2LMHeadModel, config)


def _space() -> sn.NestingSpace:
    return sn.NestingSpace(depth=[3, 6, 9, 12], ffn=[0.25, 0.5, 0.75, 1.0], heads=[3, 6, 9, 12])


def _per_call_us(nested: sn.NestedModel, keys: list, calls: int) -> list[float]:
    times = []
    clock = time.perf_counter_ns
    for i in range(calls):
        key = keys[i % len(keys)]
        start = clock()
        nested.activate(key)
        times.append((clock() - start) / 1e3)
    return times


def _allocated_bytes(fn) -> int:
    """Sum of the positive CPU memory the profiler records while `fn` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(e.cpu_memory_usage, 0) for e in prof.key_averages())


def run(quick: bool) -> list[Result]:
    nested = sn.nest(_model(), _space())
    subnets = nested.space.subnets()
    strings = [str(s) for s in subnets]
    calls = 2_000 if quick else 50_000

    cold = _per_call_us(nested, strings, len(strings))  # first activation of each: parses and caches
    warm_str = _per_call_us(nested, strings, calls)
    warm_obj = _per_call_us(nested, subnets, calls)
    timing = Result(
        "activate() median time, cycling 64 subnets (strings)",
        median(warm_str),
        TARGET_US,
        unit="us",
        detail=(
            f"{calls} calls; with Subnet objects {median(warm_obj):.2f} us; p99 "
            f"{sorted(warm_str)[int(0.99 * calls)]:.2f} us; first (uncached) call per subnet "
            f"{median(cold):.1f} us median"
        ),
    )

    fresh = sn.nest(_model(), _space())  # nothing cached: the profiled calls include the first ones
    params = {name: (p.data_ptr(), tuple(p.shape)) for name, p in fresh.named_parameters()}
    keys = [str(s) for s in fresh.space.subnets()]
    allocated = _allocated_bytes(lambda: [fresh.activate(k) for k in keys * 3])
    probe = _allocated_bytes(lambda: torch.empty(1 << 18))  # check the probe sees a 1 MiB allocation
    after = {name: (p.data_ptr(), tuple(p.shape)) for name, p in fresh.named_parameters()}
    moved = sum(params[k] != after.get(k) for k in params) + len(set(after) - set(params))
    memory = Result(
        "activate() allocated bytes (profiler, 192 switches)",
        allocated,
        0,
        unit="B",
        detail=f"probe: a 1 MiB torch.empty in the same profiler setup registers {probe} B",
    )
    pointers = Result(
        "activate(): parameters whose data_ptr or shape changed",
        moved,
        0,
        unit="params",
        detail=f"of {len(params)} parameters, checked after the 192 switches",
    )
    return [timing, memory, pointers]
