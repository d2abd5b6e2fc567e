"""8. Data parallel: a nested DDP optimizer step against plain Lightning DDP of the same model, same work.

Two processes (Lightning DDP, gloo, one CPU thread each) train the same LLaMA on random tokens in three ways:

- nested: `SortedNetModule` at the largest subnet, K=1, accumulate=1; DDP's reducer off, one bucketed
  all-reduce per optimizer step (sortednet/train/distributed.py), then clipping and AdamW;
- reducer: the same nested module, but DDP's own reducer syncs in the backward (overlapped with it) and
  sortednet's all-reduce is skipped: only correct here because K=1 at the largest subnet uses every parameter;
- plain: the un-nested model, automatic optimization, `gradient_clip_val=1.0`, AdamW (what a user would run).

Modes are run in interleaved rounds (nested, reducer, plain, plain, reducer, nested, ...), each a short
`Trainer.fit` whose steps after the first are timed on rank 0 (from one `on_train_batch_start` to the next,
so the optimizer step, clipping and the reduction are inside). Printed: the median over rounds of the ratio of
each round's median step times (pairs measured back to back, so drift in the machine's load cancels).

    python -m bench.bench_ddp            # full sizes, ~2 minutes on 2 cores
    python -m bench.bench_ddp --quick    # tiny sizes: only checks that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGET = 1.10  # nested DDP step / plain DDP step
SIZES = {
    "full": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=4000, batch=8, seq=128, steps=6, rounds=6),
    "quick": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=200, batch=4, seq=16, steps=4, rounds=2),
}  # fmt: skip


# ---- the worker: runs under Lightning DDP (re-launched per rank) -------------------------------------------------
def worker(quick: bool, out: str) -> None:
    from unittest import mock

    import lightning as L
    import torch
    import transformers as T
    from torch.utils.data import DataLoader

    import sortednet as sn
    import sortednet.train.module as module_py
    from sortednet.data.common import TensorDictDataset
    from sortednet.sampling import Sampler
    from sortednet.train import CausalLM, SortedNetModule
    from sortednet.train.distributed import allreduce_gradients

    torch.set_num_threads(1)
    T.logging.set_verbosity_error()
    size = dict(SIZES["quick" if quick else "full"])
    batch, seq, steps, rounds = (size.pop(k) for k in ("batch", "seq", "steps", "rounds"))
    config = T.LlamaConfig(**size)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (batch * 2 * (steps + 1) * 4, seq), generator=g)
    dataset = TensorDictDataset({"input_ids": ids, "labels": ids})

    class Largest(Sampler):
        name = "largest"

        def _draw(self, rng):
            return [self.largest]

    class Plain(L.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def training_step(self, b, i):
            return self.model(**b).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)

    class ReducerOn(SortedNetModule):
        def manual_backward(self, loss, *args, **kwargs):  # DDP's reducer syncs in every backward
            L.LightningModule.manual_backward(self, loss, *args, **kwargs)

    class Timer(L.Callback):
        def __init__(self):
            self.times, self.last = [], None

        def on_train_batch_start(self, trainer, module, b, i):
            now = time.perf_counter()
            if self.last is not None and i >= 2:  # the first step (and its lazy set-up) is not timed
                self.times.append(now - self.last)
            self.last = now

    def model():
        torch.manual_seed(0)
        return T.LlamaForCausalLM(config)

    reduce_times: list[float] = []

    def timed_allreduce(params, *args, **kwargs):
        start = time.perf_counter()
        calls = allreduce_gradients(params, *args, **kwargs)
        reduce_times.append(time.perf_counter() - start)
        return calls

    def fit(mode: str) -> list[float]:
        if mode == "plain":
            module, clip = Plain(model()), 1.0
        else:
            nested = sn.nest(model(), sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0]))
            cls = ReducerOn if mode == "reducer" else SortedNetModule
            module = cls(nested, CausalLM(), Largest(nested.space), optim={"lr": 1e-4, "warmup_steps": 0})
            clip = None  # SortedNetModule clips itself (grad_clip=1.0)
        timer = Timer()
        trainer = L.Trainer(
            accelerator="cpu", devices=2, strategy="ddp", max_steps=steps + 1, logger=False,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            num_sanity_val_steps=0, limit_val_batches=0, gradient_clip_val=clip, callbacks=[timer],
        )  # fmt: skip
        loader = DataLoader(dataset, batch_size=batch, shuffle=True)
        # reducer: sortednet's own all-reduce off (the reducer has done it); nested: its all-reduce timed
        patch = (
            mock.patch.object(module_py, "needs_allreduce", lambda model: False)
            if mode == "reducer"
            else mock.patch.object(module_py, "allreduce_gradients", timed_allreduce)
        )
        with patch:
            trainer.fit(module, train_dataloaders=loader)
        return timer.times

    rounds_out: list[dict[str, float]] = []
    order = ["nested", "reducer", "plain"]
    for r in range(rounds):
        times = {mode: fit(mode) for mode in (order if r % 2 == 0 else order[::-1])}
        rounds_out.append({mode: statistics.median(ts) for mode, ts in times.items()})
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        params = sum(p.numel() for p in model().parameters())
        result = {"rounds": rounds_out, "params": params, "batch": batch, "seq": seq, "steps": steps - 1}
        result["allreduce"] = statistics.median(reduce_times[1:])
        Path(out).write_text(json.dumps(result))


# ---- the driver: a subprocess (Lightning re-runs the script for rank 1), then the ratios -------------------------
def measure(quick: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "bench.bench_ddp", "--worker", "--out", str(out)] + (["--quick"] * quick)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        root = Path(__file__).resolve().parents[1]
        result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"bench_ddp worker failed:\n{result.stderr[-3000:]}")
        return json.loads(out.read_text())


def run(quick: bool) -> list:
    from .common import Result

    data = measure(quick)
    rounds = data["rounds"]
    paired = {m: statistics.median(r[m] / r["plain"] for r in rounds) for m in ("nested", "reducer")}
    med = {m: statistics.median(r[m] for r in rounds) for m in ("nested", "reducer", "plain")}
    shape = f"LLaMA {data['params'] / 1e6:.1f}M params, 2 processes x batch {data['batch']}x{data['seq']}"
    ms = ", ".join(f"{mode} {t * 1e3:.1f} ms" for mode, t in med.items())
    how = f"{len(rounds)} interleaved rounds x {data['steps']} timed steps; median over rounds of the paired ratios"
    return [
        Result(
            f"DDP step, nested (largest, K=1) / plain Lightning DDP ({shape})",
            paired["nested"],
            TARGET,
            detail=f"{how}; step medians: {ms}; sortednet's all-reduce itself {data['allreduce'] * 1e3:.1f} ms",
        ),
        Result(
            "DDP step, nested with DDP's reducer / plain Lightning DDP (information)",
            paired["reducer"],
            float("inf"),
            detail="the reducer overlaps the all-reduce with the backward, but is only correct when every "
            "backward uses every parameter (here: K=1 at the largest); sortednet's reduction works for any subnets",
        ),
    ]


# ---- the GPU check (bench/gpu_check.sh): a short nested training with FSDP2, then DDP, on this machine's GPUs ------
CHECK = {
    "gpu": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                num_key_value_heads=4, vocab_size=32000, batch=4, seq=1024),
    "quick": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=500, batch=2, seq=32),
}  # fmt: skip


def check(accelerator: str, devices: int, strategy_name: str, quick: bool, steps: int = 2) -> None:
    """`steps` timed optimizer steps (after one untimed) of sandwich K=3 nested training; rank 0 prints."""
    import lightning as L
    import torch
    import transformers as T
    from torch.utils.data import DataLoader

    import sortednet as sn
    from sortednet.data.common import TensorDictDataset
    from sortednet.sampling import make_sampler
    from sortednet.train import CausalLM, SortedNetModule
    from sortednet.train.fsdp import NestedFSDPStrategy

    T.logging.set_verbosity_error()
    gpu = accelerator == "gpu"
    size = dict(CHECK["quick" if quick else "gpu"])
    batch, seq = size.pop("batch"), size.pop("seq")
    config = T.LlamaConfig(**size)
    ids = torch.randint(
        0, config.vocab_size, (batch * devices * (steps + 1), seq), generator=torch.Generator()
    )
    torch.manual_seed(0)
    space = sn.NestingSpace(depth=[0.5, 0.75, 1.0], ffn=[0.25, 0.5, 1.0], heads=[0.5, 1.0])
    nested = sn.nest(T.LlamaForCausalLM(config), space)
    params = sum(p.numel() for p in nested.parameters())
    module = SortedNetModule(
        nested, CausalLM(), make_sampler("sandwich", nested.space, k=3), optim={"lr": 1e-4, "warmup_steps": 0}
    )
    times: list[float] = []

    class Timer(L.Callback):
        last = None

        def on_train_batch_start(self, trainer, module, b, i):
            if gpu:
                torch.cuda.synchronize()
            now = time.perf_counter()
            if self.last is not None:
                times.append(now - self.last)
            self.last = now

        def on_train_end(self, trainer, module):
            self.on_train_batch_start(trainer, module, None, -1)

    if strategy_name == "fsdp":
        strategy = NestedFSDPStrategy(param_dtype="bfloat16" if gpu else None)
        precision = "32-true"  # FSDP2's MixedPrecisionPolicy does the bf16 (gather and compute), fp32 master
    else:
        strategy, precision = "ddp", "bf16-mixed" if gpu else "32-true"
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, strategy=strategy, precision=precision,
        max_steps=steps + 1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Timer()],
    )  # fmt: skip
    dataset = TensorDictDataset({"input_ids": ids, "labels": ids})
    trainer.fit(module, train_dataloaders=DataLoader(dataset, batch_size=batch))
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0], device=module.device)
    peak = trainer.strategy.reduce(peak, reduce_op="max")
    if trainer.is_global_zero:
        step = statistics.median(times[1:])
        tokens = batch * seq * trainer.world_size
        print(
            f"{strategy_name:>4}: {trainer.world_size} x {accelerator}, LLaMA {params / 1e6:.0f}M params, "
            f"sandwich K=3, batch {batch}x{seq} per rank: step {step * 1e3:.0f} ms "
            f"(first {times[0] * 1e3:.0f} ms), {tokens / step:.0f} tokens/s (x3 subnets), "
            f"peak memory {float(peak):.2f} GiB per rank, global_step {trainer.global_step}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks that it runs)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument(
        "--check", choices=["fsdp", "ddp"], help="the GPU check: one nested training, figures"
    )
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args(argv)
    if args.check:
        check(args.accelerator, args.devices, args.check, args.quick)
        return 0
    if args.worker:
        worker(args.quick, args.out)
        return 0
    for result in run(args.quick):
        print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
