"""What a sub-model costs: FLOPs per sample (counted by torch.utils.flop_counter, not by hand), latency
measured on the current device, and a cost-stratified choice of subnets for spaces too large to evaluate
whole."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .many import ManyInOne, MemberSpace
from .spec import Subnet

Inputs = Mapping[str, torch.Tensor]


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# PyTorch counts the CUDA attention kernels but not the CPU one; without this, attention would count 0 on CPU.
_EXTRA_FORMULAS = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops


def model_inputs(batch: Inputs) -> dict[str, torch.Tensor]:
    """The model's inputs of a batch (everything but the labels)."""
    return {k: v for k, v in batch.items() if k != "labels" and isinstance(v, torch.Tensor)}


def one_sample(batch: Inputs) -> dict[str, torch.Tensor]:
    """The first example of a batch, trailing padding removed when the batch has an attention mask."""
    inputs = {k: v[:1] for k, v in model_inputs(batch).items()}
    mask = inputs.get("attention_mask")
    if mask is not None and mask.ndim == 2:
        length = max(int(mask[0].sum()), 1)
        inputs = {
            k: v[:, :length] if v.ndim >= 2 and v.shape[1] == mask.shape[1] else v for k, v in inputs.items()
        }
    return inputs


def batch_of(batch: Inputs, size: int) -> dict[str, torch.Tensor]:
    """`size` examples from a batch (repeated when the batch has fewer)."""
    inputs = model_inputs(batch)
    n = len(next(iter(inputs.values())))
    index = torch.arange(size) % n
    return {k: v[index] for k, v in inputs.items()}


def to_device(inputs: Inputs, device: torch.device | str) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


@torch.no_grad()
def count_flops(nested: ManyInOne, subnet: Subnet | str, sample: Inputs) -> int:
    """FLOPs of one forward pass of `subnet` on `sample` (multiply-add = 2 FLOPs), by FlopCounterMode."""
    with nested.use(subnet), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        nested(**sample)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to `n` inside (None: unchanged)."""
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"latency.threads={n} is below 1; allowed: an int >= 1 or null")
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def measure_latency(
    nested: ManyInOne,
    subnet: Subnet | str,
    inputs: Inputs,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
) -> float:
    """Median wall time in milliseconds of one forward pass of `subnet` on `inputs`, after `warmup` passes,
    on the device the inputs are on (synchronised on CUDA); `threads`: torch's CPU threads meanwhile."""
    if repeats < 1:
        raise ValueError(f"latency.repeats={repeats} is below 1; allowed: an int >= 1")
    device = next(iter(inputs.values())).device
    times = []
    with nested.use(subnet), cpu_threads(threads):
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            nested(**inputs)
            _sync(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(times))


# A timed repeat is trusted when the process ran for most of it (CPU time / wall time: a CPU model waits for no
# device, so a share well below one core means other processes took the cores) and the repeats agree.
MIN_CPU_SHARE = 0.8
MAX_SPREAD = 0.5  # (90th - 10th percentile) / median of one subnet's repeats
_wall, _cpu = time.perf_counter, time.process_time  # the clocks (tests simulate a busy machine with them)


@dataclass(frozen=True)
class Timing:
    """One subnet's latency: the median of its repeats (ms), the CPU time the process got per wall second while
    they were timed (None on a GPU, where the host waits for the device), and their spread around the median."""

    ms: float
    cpu_share: float | None
    spread: float

    @property
    def reliable(self) -> bool:
        busy = self.cpu_share is not None and self.cpu_share < MIN_CPU_SHARE
        return not busy and self.spread <= MAX_SPREAD

    def why(self) -> str:
        """'' when reliable, else what was wrong, in a few words."""
        parts = []
        if self.cpu_share is not None and self.cpu_share < MIN_CPU_SHARE:
            parts.append(f"the process got {self.cpu_share:.0%} of a core while timed")
        if self.spread > MAX_SPREAD:
            parts.append(f"repeats spread {self.spread:.2f}x the median")
        return ", ".join(parts)


def _timing(walls: Sequence[float], cpus: Sequence[float], on_cpu: bool) -> Timing:
    median = float(statistics.median(walls))
    p10, p90 = np.percentile(walls, [10, 90]) if len(walls) > 1 else (median, median)
    share = float(sum(cpus) / max(sum(walls), 1e-12)) if on_cpu else None
    return Timing(median * 1e3, share, float((p90 - p10) / max(median, 1e-12)))


@torch.inference_mode()
def time_subnets(
    nested: ManyInOne,
    subnets: Sequence[Subnet | str],
    inputs: Inputs,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    on_round: Callable[[int], None] | None = None,
) -> list[Timing]:
    """The latency of many subnets, interleaved: `warmup` passes of each, then `repeats` rounds that time one
    pass of every subnet in turn; per subnet the median and whether the machine was free enough to trust it.
    A burst of load on a shared machine then spreads over all subnets instead of skewing the few measured while
    it lasted, and a machine busy all along shows in the CPU time the process got."""
    if repeats < 1:
        raise ValueError(f"latency.repeats={repeats} is below 1; allowed: an int >= 1")
    device = next(iter(inputs.values())).device
    walls: list[list[float]] = [[] for _ in subnets]
    cpus: list[list[float]] = [[] for _ in subnets]
    with cpu_threads(threads):
        for subnet in subnets:
            with nested.use(subnet):
                for _ in range(warmup):
                    nested(**inputs)
        for r in range(repeats):
            for i, subnet in enumerate(subnets):
                with nested.use(subnet):
                    _sync(device)
                    wall, cpu = _wall(), _cpu()
                    nested(**inputs)
                    _sync(device)
                    walls[i].append(_wall() - wall)
                    cpus[i].append(_cpu() - cpu)
            if on_round:
                on_round(r)
    return [_timing(w, c, device.type == "cpu") for w, c in zip(walls, cpus, strict=True)]


def measure_latencies(
    nested: ManyInOne,
    subnets: Sequence[Subnet | str],
    inputs: Inputs,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    on_round: Callable[[int], None] | None = None,
) -> list[float]:
    """`time_subnets`' medians, in milliseconds."""
    return [t.ms for t in time_subnets(nested, subnets, inputs, warmup, repeats, threads, on_round)]


def stratified_subnets(space: MemberSpace, n: int, seed: int = 0) -> list[Subnet]:
    """`n` subnets spread over the cost range (cheapest first): the log-cost range is cut into `n` equal
    strata (as the budget sampler does) and one subnet drawn from each, the smallest and the largest always
    in; empty strata are filled by the subnets nearest in log-cost to their centres. The whole space if it has
    <= n."""
    ordered = space.subnets()
    if n < 1:
        raise ValueError(f"max_subnets={n} is below 1; allowed: an int >= 1")
    if len(ordered) <= n:
        return ordered
    if n == 1:
        return [ordered[-1]]
    cost = np.log(np.maximum(np.asarray(space.costs(), dtype=np.float64), 1.0))
    edges = np.linspace(cost.min(), cost.max(), n + 1)
    bins = np.clip(np.searchsorted(edges, cost, side="right") - 1, 0, n - 1)
    rng = np.random.default_rng(seed)
    picks = {0, len(ordered) - 1}
    for b in range(1, n - 1):
        members = [i for i in np.flatnonzero(bins == b) if i not in picks]
        if members:
            picks.add(int(rng.choice(members)))
    centres = (edges[:-1] + edges[1:]) / 2
    for target in centres:  # fill: nearest in log-cost to each stratum centre, until n are picked
        if len(picks) >= n:
            break
        rest = [i for i in range(len(ordered)) if i not in picks]
        picks.add(min(rest, key=lambda i: abs(cost[i] - target)))
    return [ordered[i] for i in sorted(picks)]


def pick_subnets(
    space: MemberSpace, subnets: Sequence[str] | str | int | None, max_subnets: int, seed: int = 0
) -> list[Subnet]:
    """The subnets a config names: None/"all" (every subnet, or a stratified sample of `max_subnets` when
    the space is larger), an int N (a stratified sample of N) or a list of specs (checked, cheapest first)."""
    if subnets is None or subnets == "all":
        return stratified_subnets(space, max_subnets, seed)
    if isinstance(subnets, int) and not isinstance(subnets, bool):
        return stratified_subnets(space, subnets, seed)
    if isinstance(subnets, str):
        subnets = [subnets]
    chosen = []
    for spec in subnets:
        try:
            chosen.append(space.normalize(spec))
        except ValueError as err:
            raise ValueError(f"subnets: {err}") from None
    order = {s: i for i, s in enumerate(space.subnets())}
    return sorted(dict.fromkeys(chosen), key=order.__getitem__)
