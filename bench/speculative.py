"""Self-speculative decoding: a nested character-level GPT-2 drafts for itself with its own first layers.

The model is the `shakespeare_gpt2` recipe's (GPT-2, 6 layers, hidden 128, 4 heads, 256 positions, the
character vocabulary of the 38 plays), nested in depth (2, 4, 6 layers) and trained here on all three depths
at every step, or loaded from a run's one-file checkpoint (--ckpt, e.g. `sortednet-train
experiment=shakespeare_gpt2`). `nested.draft("depth=2")` is the assistant: views of the nested weights, no
copy. Greedy generation from held-out prompts with and without it, timed alternately; the outputs must be
identical. Acceptance rate = draft tokens the full model accepted / draft tokens proposed.

python -m bench.speculative --save gpt2.safetensors   # trains 500 steps (one CPU thread: ~5 min idle), then measures
python -m bench.speculative --quick         # 30 steps, short generations: only checks that it runs
python -m bench.speculative --ckpt runs/shakespeare_gpt2/<time>/checkpoints/last.safetensors
python -m bench.speculative --device cuda   # the same on a GPU (default: cuda when available)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time

import torch
import transformers as T
from transformers.generation.candidate_generator import AssistedCandidateGenerator

import sortednet as sn
from sortednet.data.lm import CharTokenizer
from sortednet.data.shakespeare import shakespeare_text

from .common import setup

MODEL = dict(
    n_embd=128, n_layer=6, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
)
BLOCK = 128
# (label, the draft's generation_config, which HF's assisted generation reads): HF's defaults (up to 20 draft
# tokens, drafting stops below an adaptive confidence threshold starting at 0.4), and a fixed number k
SETTINGS = [
    ("HF default", dict(num_assistant_tokens=20, assistant_confidence_threshold=0.4)),
    ("k=4", dict(num_assistant_tokens=4, assistant_confidence_threshold=0.0)),
    ("k=8", dict(num_assistant_tokens=8, assistant_confidence_threshold=0.0)),
]


def corpus() -> tuple[CharTokenizer, torch.Tensor, torch.Tensor]:
    """The recipe's data: char tokenizer over all plays, the last 5% of the stream held out."""
    text = shakespeare_text()
    tokenizer = CharTokenizer.from_text(text)
    ids = torch.tensor(tokenizer.encode(text))
    n_val = int(len(ids) * 0.05)
    return tokenizer, ids[:-n_val], ids[-n_val:]


def windows(ids: torch.Tensor, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(ids) - length, (n,), generator=generator)
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


def train(steps: int, batch: int, device: str, train_ids: torch.Tensor, vocab: int) -> sn.NestedModel:
    torch.manual_seed(0)
    config = T.GPT2Config(vocab_size=vocab, bos_token_id=0, eos_token_id=0, **MODEL)
    nested = sn.nest(T.GPT2LMHeadModel(config), sn.NestingSpace(depth=[2, 4, 6])).to(device)
    optimizer = torch.optim.AdamW(nested.parameters(), lr=3e-3, weight_decay=0.01)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup)))
        ),
    )
    generator = torch.Generator().manual_seed(0)
    nested.train()
    start = time.perf_counter()
    for step in range(steps):
        x = windows(train_ids, batch, BLOCK, generator).to(device)
        losses = []
        for subnet in nested.space.subnets():
            with nested.use(subnet):
                loss = nested(input_ids=x, labels=x).loss
                loss.backward()
            losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(nested.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            text = ", ".join(f"{s}: {v:.3f}" for s, v in zip(nested.space.subnets(), losses, strict=True))
            print(f"  step {step}: train loss {text} ({time.perf_counter() - start:.0f} s)", flush=True)
    return nested.eval()


def validation_loss(nested: sn.NestedModel, val_ids: torch.Tensor, device: str, subnet: str) -> float:
    x = windows(val_ids, 16, BLOCK, torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad(), nested.use(subnet):
        return nested(input_ids=x, labels=x).loss.item()


@contextlib.contextmanager
def counting(nested: sn.NestedModel, draft: torch.nn.Module):
    """Counts full-model forwards, draft forwards (one proposed token each) and accepted draft tokens."""
    counts = dict(full=0, proposed=0, accepted=0)
    original = AssistedCandidateGenerator.update_candidate_strategy

    def update(self, input_ids, scores, num_matches):
        counts["accepted"] += int(num_matches)
        return original(self, input_ids, scores, num_matches)

    hooks = [
        nested.model.register_forward_hook(lambda *_: counts.__setitem__("full", counts["full"] + 1)),
        draft.register_forward_hook(lambda *_: counts.__setitem__("proposed", counts["proposed"] + 1)),
    ]
    AssistedCandidateGenerator.update_candidate_strategy = update
    try:
        yield counts
    finally:
        AssistedCandidateGenerator.update_candidate_strategy = original
        for h in hooks:
            h.remove()


def measure(nested, drafts, prompts, new_tokens: int, repeats: int, device: str) -> list[dict]:
    base = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    variants = [("full model alone", None, {})]
    variants += [
        (f"draft {name}, {label}", draft, kw) for name, draft in drafts.items() for label, kw in SETTINGS
    ]

    def call(draft, settings, prompt):
        if draft is not None:
            draft.generation_config.update(num_assistant_tokens_schedule="constant", **settings)
        with torch.no_grad():
            out = nested.generate(prompt, assistant_model=draft, **base)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    results = []
    reference = [call(None, {}, p) for p in prompts]  # also warms up
    for label, draft, settings in variants[1:]:
        with counting(nested, draft) as counts:
            for p, want in zip(prompts, reference, strict=True):
                assert torch.equal(call(draft, settings, p), want), (
                    f"{label}: assisted output differs from the full model's"
                )
        results.append(dict(label=label, **counts))
        print(f"  {label}: {counts}", flush=True)
    results.insert(0, dict(label=variants[0][0]))
    times: list[list[float]] = [[] for _ in variants]
    for r in range(repeats):  # alternate the order so that drift and warm caches cancel
        order = range(len(variants)) if r % 2 == 0 else reversed(range(len(variants)))
        for i in order:
            _, draft, settings = variants[i]
            start = time.perf_counter()
            for p in prompts:
                call(draft, settings, p)
            times[i].append(time.perf_counter() - start)
    for result, t in zip(results, times, strict=True):
        result["tokens_per_s"] = new_tokens * len(prompts) / statistics.median(t)
    return results


def report(results: list[dict], new_tokens: int, prompts: int) -> str:
    alone = results[0]["tokens_per_s"]
    lines = [
        f"greedy, {prompts} held-out prompts of 64 characters, {new_tokens} new tokens each; outputs identical",
        "",
        "| generation | tokens/s | speed-up | acceptance rate | tokens per full-model forward |",
        "|---|---|---|---|---|",
        f"| full model alone | {alone:.0f} | 1.00 | | 1.00 |",
    ]
    for r in results[1:]:
        acceptance = r["accepted"] / max(r["proposed"], 1)
        per_forward = new_tokens * prompts / max(r["full"], 1)
        lines.append(
            f"| {r['label']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / alone:.2f} | {acceptance:.1%} | {per_forward:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="30 training steps, short generations")
    parser.add_argument(
        "--ckpt", help="a sortednet checkpoint of a char-level GPT-2 (shakespeare_gpt2) instead of training"
    )
    parser.add_argument("--steps", type=int, default=500, help="training steps when no --ckpt (default 500)")
    parser.add_argument(
        "--save", help="write the model trained here to this .safetensors (reuse it with --ckpt)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads (default 1: this model is too small to gain from two, and a shared CPU slows two down)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over the prompts (default 3)")
    parser.add_argument(
        "--new-tokens", type=int, default=128, help="tokens generated per prompt (default 128)"
    )
    args = parser.parse_args(argv)
    setup()
    torch.set_num_threads(args.threads)
    tokenizer, train_ids, val_ids = corpus()
    steps = 30 if args.quick else args.steps
    if args.ckpt:
        nested = sn.load(args.ckpt).to(args.device).eval()
        if nested.model.config.vocab_size != tokenizer.vocab_size:
            raise SystemExit(
                f"--ckpt: vocab_size {nested.model.config.vocab_size} is not the Shakespeare char vocabulary's {tokenizer.vocab_size}"
            )
        source = f"checkpoint {args.ckpt}"
    else:
        start = time.perf_counter()
        print(f"training a nested char-level GPT-2 for {steps} steps on {args.device}", flush=True)
        nested = train(steps, 8 if args.quick else 16, args.device, train_ids, tokenizer.vocab_size)
        if args.save:
            nested.save(args.save)
        source = f"trained here: {steps} steps x 3 depths, batch {8 if args.quick else 16}x{BLOCK}, {time.perf_counter() - start:.0f} s"
    nested.generation_config.eos_token_id = None  # '\n' is id 0: generate the full length
    depths = ["depth=2", "depth=4"]
    losses = {
        s: validation_loss(nested, val_ids, args.device, s) for s in [*depths, str(nested.space.largest)]
    }
    drafts = {s: nested.draft(s) for s in depths}
    for d in drafts.values():
        d.generation_config.eos_token_id = None
    new_tokens = 32 if args.quick else args.new_tokens
    prompts = windows(val_ids, 3, 64, torch.Generator().manual_seed(2)).to(args.device)
    results = measure(
        nested, drafts, [p[None] for p in prompts], new_tokens, 2 if args.quick else args.repeats, args.device
    )
    print(f"\nmodel: {source}; {args.device}, torch threads {torch.get_num_threads()}")
    print("validation loss (nats/char): " + ", ".join(f"{s}: {v:.3f}" for s, v in losses.items()))
    print(
        f"sample (full model): {tokenizer.decode(nested.generate(prompts[:1], max_new_tokens=80, do_sample=False, pad_token_id=0)[0])!r}"
    )
    print(report(results, new_tokens, len(prompts)))


if __name__ == "__main__":
    main()
