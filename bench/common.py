"""Shared pieces: the result record, interleaved timing, the benchmark models and their inputs."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers as T  # noqa: E402

THREADS = 2


def setup() -> None:
    torch.set_num_threads(THREADS)
    T.logging.set_verbosity_error()
    T.logging.disable_progress_bar()


@dataclass
class Result:
    benchmark: str
    value: float
    target: float
    unit: str = "x"  # "x": a ratio; otherwise the unit printed after the value
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.value <= self.target

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "MISS"

    def measured(self) -> str:
        return f"{self.value:.3f}" if self.unit == "x" else f"{self.value:.3g} {self.unit}"

    def target_text(self) -> str:
        return f"<= {self.target:g}" if self.unit == "x" else f"<= {self.target:g} {self.unit}"

    def line(self) -> str:
        text = f"  -> {self.benchmark}: {self.measured()} (target {self.target_text()}) {self.status}"
        return text + (f"\n     {self.detail}" if self.detail else "")


def median(xs) -> float:
    return statistics.median(list(xs))


@dataclass
class Paired:
    a: list[float]
    b: list[float]

    @property
    def ratio(self) -> float:
        """Median of the per-pair ratios a/b (each pair measured back to back)."""
        return median(x / y for x, y in zip(self.a, self.b, strict=True))

    def describe(self, a: str, b: str) -> str:
        ma, mb = median(self.a), median(self.b)
        return (
            f"{a} {ma * 1e3:.1f} ms, {b} {mb * 1e3:.1f} ms (median of {len(self.a)}; "
            f"ratio of medians {ma / mb:.3f})"
        )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fa: Callable[[], object], fb: Callable[[], object], repeats: int, warmup: int) -> Paired:
    """Time `fa` and `fb` alternately (A B B A A B ...), so drift and order effects cancel in the pairs."""
    for _ in range(warmup):
        fa()
        fb()
    gc.collect()
    gc.disable()
    try:
        a, b = [], []
        for i in range(repeats):
            if i % 2 == 0:
                a.append(timed(fa))
                b.append(timed(fb))
            else:
                b.append(timed(fb))
                a.append(timed(fa))
    finally:
        gc.enable()
    return Paired(a, b)


# ---- models ---------------------------------------------------------------------------------------
# BERT-base and a small LLaMA with grouped-query attention; --quick shrinks the widths and vocabularies.
BERT = dict(
    hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_hidden_layers=4, num_labels=2
)
BERT_QUICK = dict(BERT, hidden_size=64, num_attention_heads=4, intermediate_size=256, vocab_size=1000)
LLAMA = dict(
    hidden_size=1024,
    num_attention_heads=16,
    num_key_value_heads=4,
    intermediate_size=2816,
    num_hidden_layers=4,
    vocab_size=8000,
)
LLAMA_QUICK = dict(
    LLAMA,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=176,
    vocab_size=1000,
)


def bert_config(quick: bool, **overrides) -> T.BertConfig:
    return T.BertConfig(**{**(BERT_QUICK if quick else BERT), **overrides})


def llama_config(quick: bool) -> T.LlamaConfig:
    return T.LlamaConfig(**(LLAMA_QUICK if quick else LLAMA))


def shape_text(config, batch_shape: tuple[int, int]) -> str:
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None)
    kv_text = f"/{kv}" if kv and kv != heads else ""
    return (
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {heads}{kv_text} heads, "
        f"ffn {config.intermediate_size}; batch {batch_shape[0]}x{batch_shape[1]}"
    )


def build(cls: type, config, seed: int = 0) -> torch.nn.Module:
    """The same seed and config always give the same weights."""
    torch.manual_seed(seed)
    return cls(config)


def text_batch(config, batch: int, seq: int, labels: str | None, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, config.vocab_size, (batch, seq), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if labels == "class":
        out["labels"] = torch.randint(0, config.num_labels, (batch,), generator=g)
    elif labels == "lm":
        out["labels"] = ids
    return out


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """forward + backward + AdamW step (+ zero_grad), as a closure over a fresh optimizer."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step() -> None:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


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
