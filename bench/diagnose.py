"""Explaining a miss: where the time goes (phases of a train step, aten ops by self CPU time)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .common import median


def phase_times(model: torch.nn.Module, opt: torch.optim.Optimizer, batch, repeats: int) -> dict[str, float]:
    """Median seconds of forward, backward and optimizer step (for explaining a miss)."""
    phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = model(**batch).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        for name, t in zip(phases, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            phases[name].append(t)
    return {k: median(v) for k, v in phases.items()}


def top_ops(fn: Callable[[], object], runs: int = 2) -> dict[str, float]:
    """Self CPU milliseconds per aten op over `runs` calls (the profiler's own warm-up call is dropped)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            fn()
    return {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages()}


def ops_diff(a: dict[str, float], b: dict[str, float], n: int = 6) -> str:
    """The ops on which side A spends the most extra self time than side B."""
    extra = sorted(((a.get(k, 0.0) - b.get(k, 0.0), k) for k in set(a) | set(b)), reverse=True)[:n]
    return ", ".join(f"{k} {a.get(k, 0):.0f} vs {b.get(k, 0):.0f} ms" for _, k in extra)


def explain_train_step(
    model_a, step_a, model_b, step_b, batch, names: tuple[str, str], repeats: int = 3
) -> str:
    """Phase medians and the ops with the most extra self time, side A against side B."""
    pa = phase_times(model_a, step_a.optimizer, batch, repeats)
    pb = phase_times(model_b, step_b.optimizer, batch, repeats)
    phases = ", ".join(f"{k} {pa[k] * 1e3:.0f} vs {pb[k] * 1e3:.0f} ms" for k in pa)
    return (
        f"\n     phases {names[0]} vs {names[1]} (median of {repeats}): {phases}"
        f"\n     most extra self time ({names[0]} vs {names[1]}): {ops_diff(top_ops(step_a), top_ops(step_b))}"
    )
