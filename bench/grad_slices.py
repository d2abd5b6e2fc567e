"""10. Slice-aware gradients and the optimizer: subnet train step / equal dense model step, old path vs new.

    python -m bench.grad_slices            # LLaMA and BERT shapes of BENCHMARKS.md, a few minutes on 2 cores
    python -m bench.grad_slices --quick    # tiny sizes: checks that it runs

The shapes and subnets are those of benchmark 2 (bench/subnet_train.py): the dense model is
`nested.extract(subnet)`. Each row times the nested model (subnet active) and the dense model side by side,
each step forward + backward + optimizer step + zero_grad, with the same kind of optimizer on both sides:

- before:    autograd's slice gradients (`slice_aware_grads(False)`), torch AdamW as before (for-loop on CPU);
- grads:     slice-aware gradients, the same for-loop AdamW (the gradient change alone);
- after:     slice-aware gradients, fused AdamW (`optim.update=all`, the new default), dense fused too;
- touched:   as after, with `optim.update=touched` (only the used rows/columns move).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
import transformers as T
from torch.utils._python_dispatch import TorchDispatchMode

import sortednet as sn
from sortednet.optim import NestedAdamW
from sortednet.slice_grad import slice_aware_grads

from .common import Result, bert_config, build, interleaved, llama_config, setup, shape_text, text_batch
from .diagnose import phase_times

TARGET = 1.10
CONFIGS = {  # name -> (slice-aware gradients, optimizer: loop | fused, update)
    "before": (False, "loop", "all"),
    "grads": (True, "loop", "all"),
    "after": (True, "fused", "all"),
    "touched": (True, "fused", "touched"),
}
LR = 1e-5


def _optimizer(model: torch.nn.Module, kind: str, update: str, nested: sn.NestedModel | None):
    if nested is None:  # the dense model: torch's AdamW, as plain training would use it
        return torch.optim.AdamW(model.parameters(), lr=LR, fused=kind == "fused" or None)
    touched = {} if update == "touched" else None
    return NestedAdamW(model.parameters(), lr=LR, touched=touched, fused=kind == "fused")


def _step(model, batch, new_grads: bool, opt, nested: sn.NestedModel | None) -> Callable[[], None]:
    touched = getattr(opt, "touched", None)

    def step() -> None:
        if nested is not None:
            nested.state.touched = touched
        with slice_aware_grads(new_grads):
            model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


def _phases(model, step, batch, new_grads: bool, repeats: int) -> list[float]:
    """Median forward, backward, optimizer milliseconds (busy samples kept if nothing else)."""
    samples, fallback = [], []
    with slice_aware_grads(new_grads):
        for _ in range(2 * repeats):
            times, clean = phase_times(model, step.optimizer, batch)
            (samples if clean else fallback).append(times)
            if len(samples) >= repeats:
                break
    use = samples or fallback
    return [sorted(t[i] for t in use)[len(use) // 2] * 1e3 for i in range(3)]


class _NewBytes(TorchDispatchMode):
    """Bytes of the new tensors that ops return (views and in-place results excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        if returns and returns[0].alias_info is None:
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


def _allocated_mib(step: Callable[[], None], new_grads: bool) -> float:
    """MiB of new tensors in one step: the work the paths do, whatever the load on the machine."""
    with slice_aware_grads(new_grads), _NewBytes() as mode:
        step()
    return mode.bytes / 2**20


def _case(
    name: str,
    cls: type,
    config,
    space,
    subnet: str,
    labels: str,
    batch_shape,
    quick: bool,
    phases: bool = False,
):
    nested = sn.nest(build(cls, config), space)
    dense = nested.extract(subnet)
    nested.activate(subnet)
    nested.train(), dense.train()
    batch = text_batch(config, *batch_shape, labels=labels)
    repeats, warmup = (3, 1) if quick else (6, 1)
    results, rows = [], []
    for label, (new_grads, kind, update) in CONFIGS.items():
        step_n = _step(nested, batch, new_grads, _optimizer(nested, kind, update, nested), nested)
        step_d = _step(dense, batch, True, _optimizer(dense, kind, update, None), None)
        paired = interleaved(step_n, step_d, repeats, warmup)
        nan = [math.nan] * 3
        phases_n = _phases(nested, step_n, batch, new_grads, 3) if phases else nan
        phases_d = _phases(dense, step_d, batch, True, 3) if phases else nan
        mib = _allocated_mib(step_n, new_grads), _allocated_mib(step_d, True)
        nested.state.touched = None
        text = ", ".join(
            f"{p} {a:.0f} vs {b:.0f} ms"
            for p, a, b in zip(("forward", "backward", "optimizer"), phases_n, phases_d, strict=True)
        )
        text = f"; phases nested vs dense: {text}" if phases else ""
        detail = (
            f"{shape_text(config, batch_shape)}; subnet {subnet}; slice-aware grads {new_grads}, AdamW {kind}, "
            f"update={update}; {paired.describe('nested', 'dense')}{text}; "
            f"new tensors per step nested {mib[0]:.0f} MiB vs dense {mib[1]:.0f} MiB"
        )
        target = TARGET if label in ("after", "touched") else math.inf
        results.append(
            Result(f"{label}: subnet train step / dense, {name}", paired.ratio, target, detail=detail)
        )
        results[-1].busy = paired.busy
        rows.append((label, paired, phases_n, phases_d, mib))
        del step_n, step_d  # the optimizers' state
    return results, rows


def cases(quick: bool):
    seq = 32 if quick else 128
    return [
        (
            "LLaMA, 1/2 depth, 1/2 FFN, 1/2 heads",
            T.LlamaForCausalLM,
            llama_config(quick),
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0]),
            "depth=0.5,ffn=0.5,heads=0.5",
            "lm",
            (4, seq),
        ),
        (
            "BERT, 1/2 depth, 1/2 FFN",
            T.BertForSequenceClassification,
            bert_config(quick),
            sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0]),
            "depth=0.5,ffn=0.5",
            "class",
            (8, seq),
        ),
    ]


def run(quick: bool) -> list[Result]:
    out: list[Result] = []
    for case in cases(quick):
        results, _ = _case(*case, quick=quick)
        out += results
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (checks that it runs)")
    parser.add_argument(
        "--phases", action="store_true", help="also time forward, backward and optimizer apart"
    )
    parser.add_argument("--only", choices=("llama", "bert"), help="one of the two shapes")
    args = parser.parse_args(argv)
    setup()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; ratio = nested subnet step / dense step"
    )
    for case in cases(args.quick):
        if args.only and not case[0].lower().startswith(args.only):
            continue
        results, rows = _case(*case, quick=args.quick, phases=args.phases)
        print(f"\n{case[0]}: {results[0].detail.split(';')[0]}")
        print(
            f"  {'path':<8} {'nested ms':>10} {'dense ms':>9} {'ratio':>6} {'CPU ratio':>9} {'util':>5}"
            "   phases fwd/bwd/opt, nested | dense (ms)   MiB of new tensors, nested | dense"
        )
        for label, paired, pn, pd, mib in rows:
            a, b = sorted(paired.a)[len(paired.a) // 2], sorted(paired.b)[len(paired.b) // 2]
            busy = " (busy)" if paired.busy else ""
            phases = f"{pn[0]:.0f}/{pn[1]:.0f}/{pn[2]:.0f} | {pd[0]:.0f}/{pd[1]:.0f}/{pd[2]:.0f}"
            print(
                f"  {label:<8} {a * 1e3:>10.1f} {b * 1e3:>9.1f} {paired.ratio:>6.3f} {paired.cpu_ratio:>9.3f} "
                f"{paired.utilisation:>5.0%}   {phases:<34}{mib[0]:>5.0f} | {mib[1]:.0f}{busy}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
