"""Training tokens/s on one GPU: a nested Qwen2-shaped model (~0.5B, the shape of Qwen2.5-0.5B built from its
config, nothing downloaded) at the largest and at a half-size subnet, against the plain transformers model of the
same shape, bf16 autocast, SDPA attention, eager and compiled (`sortednet.train.compiled.compile_model`, what
`train.compile=true` runs). One training step = forward + backward + fused AdamW step + zero_grad.

    python -m bench.gpu_tokens                       # cuda, batch 8 x 1024
    python -m bench.gpu_tokens --quick --device cpu  # a tiny model: checks the script itself
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import transformers as T

import sortednet as sn
from sortednet.optim import NestedAdamW
from sortednet.train.compiled import compile_model

QWEN2_05B = dict(  # Qwen2.5-0.5B's shape
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
)
TINY = dict(QWEN2_05B, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=1000)  # fmt: skip
SPACE = dict(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0])
HALF = "depth=0.5,ffn=0.5,heads=0.5"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def tokens_per_s(step: Callable[[], None], tokens: int, device: str, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return tokens * repeats / (time.perf_counter() - start)


def train_step(model, forward, batch, device: str, nested: sn.NestedModel | None, subnet: str | None):
    opt = (NestedAdamW if nested is not None else torch.optim.AdamW)(model.parameters(), lr=1e-5, fused=True)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            if nested is not None:
                with nested.use(subnet):
                    loss = forward(**batch).loss
            else:
                loss = forward(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a tiny model, short sequences")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    batch_size, seq = (2, 64) if args.quick else (args.batch, args.seq)
    config = T.Qwen2Config(**(TINY if args.quick else QWEN2_05B), attn_implementation="sdpa")
    torch.manual_seed(0)
    nested = sn.nest(T.Qwen2ForCausalLM(config), sn.NestingSpace(SPACE)).to(args.device).train()
    ids = torch.randint(0, config.vocab_size, (batch_size, seq), device=args.device)
    batch = {"input_ids": ids, "labels": ids}
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"{name}; torch {torch.__version__}; Qwen2 {sum(p.numel() for p in nested.parameters()) / 1e6:.0f}M "
          f"params; batch {batch_size}x{seq}; bf16 autocast, SDPA, fused AdamW")  # fmt: skip
    print(f"{'model':<34} {'eager tok/s':>12} {'compiled tok/s':>15}")
    tokens = batch_size * seq
    for label, subnet in (("largest", str(nested.space.largest)), ("half", HALF)):
        plain = nested.extract(subnet).to(args.device).train()
        rows = {"nested": (nested, nested), "plain": (plain, None)}
        for kind, (model, owner) in rows.items():
            speeds = []
            for compiled in (False, True):
                core = owner.model if owner is not None else model
                forward = compile_model(core, "inductor", len(nested.space)) if compiled else model
                step = train_step(model, forward, batch, args.device, owner, subnet)
                speeds.append(tokens_per_s(step, tokens, args.device, 3, 2 if args.quick else args.repeats))
            print(
                f"{kind + ' ' + label + ' (' + subnet + ')':<34} {speeds[0]:>12.0f} {speeds[1]:>15.0f}",
                flush=True,
            )
        del plain
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
