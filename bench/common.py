"""Shared pieces: the result record, interleaved timing, the benchmark models and their inputs."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

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
    busy: bool = False  # another process took our cores while this was timed: the number is unreliable
    module: str = ""  # the benchmark module that measured it (set by run_all)

    @property
    def info(self) -> bool:
        """A figure reported for information: no target to pass or miss."""
        return self.target == float("inf")

    @property
    def passed(self) -> bool:
        return not self.info and not self.busy and self.value <= self.target

    @property
    def status(self) -> str:
        if self.busy:
            return "NOT MEASURED (busy)"
        if self.info:
            return "info"
        return "PASS" if self.passed else "MISS"

    def measured(self) -> str:
        return f"{self.value:.3f}" if self.unit == "x" else f"{self.value:.3g} {self.unit}"

    def target_text(self) -> str:
        if self.info:
            return "-"
        return f"<= {self.target:g}" if self.unit == "x" else f"<= {self.target:g} {self.unit}"

    def line(self) -> str:
        text = f"  -> {self.benchmark}: {self.measured()} (target {self.target_text()}) {self.status}"
        return text + (f"\n     {self.detail}" if self.detail else "")


def median(xs) -> float:
    return statistics.median(list(xs))


BUSY = 0.75  # CPU seconds / (wall seconds x threads) below this: another process took our cores


class Call(NamedTuple):
    """One timed call: wall-clock and process CPU seconds."""

    wall: float
    cpu: float

    @property
    def utilisation(self) -> float:
        """About 1 on an idle machine (both threads busy), low when other processes take the cores."""
        return self.cpu / (self.wall * THREADS)


@dataclass
class Paired:
    """Calls of A and B timed back to back; pairs in which either call was starved of CPU are left out."""

    pairs: list[tuple[Call, Call]]
    dropped: int = 0  # pairs timed while the machine was busy, left out

    @property
    def a(self) -> list[float]:
        return [x.wall for x, _ in self.pairs]

    @property
    def b(self) -> list[float]:
        return [y.wall for _, y in self.pairs]

    @property
    def ratio(self) -> float:
        """Median of the per-pair wall-clock ratios a/b."""
        return median(a.wall / b.wall for a, b in self.pairs)

    @property
    def cpu_ratio(self) -> float:
        return median(a.cpu / b.cpu for a, b in self.pairs)

    @property
    def utilisation(self) -> float:
        return median(min(a.utilisation, b.utilisation) for a, b in self.pairs)

    @property
    def busy(self) -> bool:
        return self.utilisation < BUSY

    def describe(self, a: str, b: str) -> str:
        ma, mb = median(self.a), median(self.b)
        busy = " (machine busy: timings unreliable)" if self.busy else ""
        return (
            f"{a} {ma * 1e3:.1f} ms, {b} {mb * 1e3:.1f} ms (median of {len(self.pairs)} pairs, {self.dropped} "
            f"busy pairs left out; ratio of medians {ma / mb:.3f}; CPU-time ratio {self.cpu_ratio:.3f}; "
            f"CPU utilisation {self.utilisation:.0%}{busy})"
        )


def timed(fn: Callable[[], object]) -> Call:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Call(time.perf_counter() - wall, time.process_time() - cpu)


def interleaved(fa: Callable[[], object], fb: Callable[[], object], repeats: int, warmup: int) -> Paired:
    """Time `fa` and `fb` alternately (A B B A A B ...), so drift and order effects cancel in the pairs.

    A pair in which either call ran with CPU utilisation under BUSY (another process on our cores) is
    timed again, up to `repeats` extra pairs; if too few clean pairs remain, every pair is kept and the
    result is marked busy.
    """
    for _ in range(warmup):
        fa()
        fb()
    gc.collect()
    gc.disable()
    clean, timed_pairs = [], []
    try:
        for i in range(2 * repeats):
            if len(clean) >= repeats or (i >= repeats and len(clean) < repeats // 4):
                break  # enough clean pairs, or the machine stays busy: stop early
            if i % 2 == 0:
                pair = timed(fa), timed(fb)
            else:
                pb = timed(fb)
                pair = timed(fa), pb
            timed_pairs.append(pair)
            if min(pair[0].utilisation, pair[1].utilisation) >= BUSY:
                clean.append(pair)
    finally:
        gc.enable()
    if len(clean) >= max(3, repeats // 2):
        return Paired(clean, dropped=len(timed_pairs) - len(clean))
    return Paired(timed_pairs)


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


def forward_calls(many, subnet, plain: torch.nn.Module, batch: dict) -> tuple[Callable[[], None], ...]:
    """Two forwards without grad, to time against each other: a many-in-one model under `use(subnet)`, and
    a plain model."""

    @torch.no_grad()
    def under_use() -> None:
        with many.use(subnet):
            many(**batch)

    @torch.no_grad()
    def plain_forward() -> None:
        plain(**batch)

    return under_use, plain_forward


def forward_vs_plain(many, subnet, plain: torch.nn.Module, batch: dict, quick: bool) -> Paired:
    """`forward_calls` timed by `interleaved`."""
    repeats, warmup = (6, 1) if quick else (30, 3)
    return interleaved(*forward_calls(many, subnet, plain, batch), repeats, warmup)


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
    """forward + backward + AdamW step (+ zero_grad), as a closure over a fresh optimizer: fused AdamW, as
    `sortednet-train` steps (benchmark 10 compares it with the for-loop AdamW)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step() -> None:
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.optimizer = opt  # type: ignore[attr-defined]
    return step
