"""Explaining a miss: where the time goes (phases of a train step, aten ops by self CPU time)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .common import BUSY, median, timed

PHASES = ("forward", "backward", "optimizer")


def phase_times(model: torch.nn.Module, opt: torch.optim.Optimizer, batch) -> tuple[list[float], bool]:
    """Seconds of forward, backward and optimizer step (+ zero_grad) of one train step; whether it ran clean."""
    out = {}
    calls = [
        timed(lambda: out.update(loss=model(**batch).loss)),
        timed(lambda: out["loss"].backward()),
        timed(lambda: (opt.step(), opt.zero_grad(set_to_none=True))),
    ]
    return [c.wall for c in calls], all(c.utilisation >= BUSY for c in calls)


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
    model_a, step_a, model_b, step_b, batch, names: tuple[str, str], repeats: int = 5
) -> str:
    """Phase medians (A and B alternately, busy steps left out) and the ops with the most extra self time."""
    samples: dict[int, list[list[float]]] = {0: [], 1: []}
    for _ in range(3 * repeats):
        if min(len(v) for v in samples.values()) >= repeats:
            break
        for side, (model, step) in enumerate(((model_a, step_a), (model_b, step_b))):
            times, clean = phase_times(model, step.optimizer, batch)
            if clean:
                samples[side].append(times)
    if not all(samples.values()):
        return "\n     phases: every step ran on a busy machine, not measured"
    med = {s: [median(t[i] for t in samples[s]) * 1e3 for i in range(3)] for s in samples}
    phases = ", ".join(f"{p} {med[0][i]:.0f} vs {med[1][i]:.0f} ms" for i, p in enumerate(PHASES))
    return (
        f"\n     phases {names[0]} vs {names[1]} (medians of {len(samples[0])}/{len(samples[1])}): {phases}"
        f"\n     most extra self time ({names[0]} vs {names[1]}): {ops_diff(top_ops(step_a), top_ops(step_b))}"
    )
