"""6. One-file checkpoint size against `save_pretrained`'s safetensors of the same full model.

The nested model writes every subnet into one file; `save_pretrained` runs on a fresh un-nested copy
(same config and seed). GPT-2 ties lm_head to the token embedding; LLaMA does not.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import transformers as T

import sortednet as sn

from .common import Result, build, llama_config

TARGET = 1.01


def _gpt2_config(quick: bool) -> T.GPT2Config:
    if quick:
        return T.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=1000, bos_token_id=0, eos_token_id=0
        )
    return T.GPT2Config(n_embd=512, n_layer=6, n_head=8, n_positions=1024)


def _case(name: str, slug: str, cls: type, config, space: sn.NestingSpace, tmp: Path) -> Result:
    nested = sn.nest(build(cls, config), space)
    nested.save(tmp / f"{slug}.safetensors")
    ours = (tmp / f"{slug}.safetensors").stat().st_size
    del nested
    plain = build(cls, config)
    plain.save_pretrained(tmp / slug)
    files = sorted((tmp / slug).glob("*.safetensors"))
    theirs = sum(f.stat().st_size for f in files)
    params = sum(p.numel() for p in plain.parameters())
    return Result(
        f"checkpoint bytes / save_pretrained bytes, {name}",
        ours / theirs,
        TARGET,
        detail=f"{ours:,} vs {theirs:,} B ({len(files)} file(s)); {params / 1e6:.1f}M parameters",
    )


def run(quick: bool) -> list[Result]:
    space = sn.NestingSpace(depth=[0.5, 1.0], ffn=[0.5, 1.0], heads=[0.5, 1.0])
    with tempfile.TemporaryDirectory(prefix="sortednet-bench-") as tmp:
        return [
            _case("GPT-2 (tied lm_head)", "gpt2", T.GPT2LMHeadModel, _gpt2_config(quick), space, Path(tmp)),
            _case("LLaMA", "llama", T.LlamaForCausalLM, llama_config(quick), space, Path(tmp)),
        ]
