"""7. Peak memory of `sn.load_submodel(path, smallest)` against the bytes of the subnet's weights.

The parent writes a one-file checkpoint of a BERT-base-sized BertModel (~110M parameters) to a temp
dir. A fresh child process imports torch, transformers, sortednet and the model class (transformers
imports model classes lazily, ~135 MiB that any use of the class pays once; reported apart), takes its
RSS as the baseline, resets the peak (`5 > /proc/self/clear_refs`), loads the smallest subnet, then reads
every weight once, and reads VmHWM. Reading the weights is part of the measurement because the loaded
tensors are views of a memory-mapped checkpoint: the load alone makes few pages resident, any use of the
model faults the rest in.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.5
MiB = 1 << 20


def _status() -> dict[str, int]:
    """Memory lines of /proc/self/status, in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def child(path: str, subnet: str, class_name: str) -> None:
    import torch
    import transformers

    import sortednet as sn

    from .common import setup

    setup()
    imports = _status()
    getattr(transformers, class_name)  # the lazy import of the model class and its modelling code
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    base = _status()
    start = time.perf_counter()
    model = sn.load_submodel(path, subnet)
    seconds = time.perf_counter() - start
    loaded = _status()
    tensors = {t.data_ptr(): t for t in model.state_dict().values()}
    with torch.no_grad():
        for t in tensors.values():
            t.sum()  # read every weight once, as any forward pass would
    end = _status()
    print(
        json.dumps(
            {
                "imports": imports,
                "base": base,
                "loaded": loaded,
                "end": end,
                "seconds": seconds,
                "weight_bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
                "storage_bytes": sum(t.untyped_storage().nbytes() for t in tensors.values()),
                "noncontiguous": [k for k, t in model.state_dict().items() if not t.is_contiguous()],
                "params": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def _checkpoint(tmp: Path, quick: bool) -> tuple[Path, str, int]:
    import transformers as T

    import sortednet as sn

    from .common import build

    if quick:
        config = T.BertConfig(
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=256,
            num_hidden_layers=12,
            vocab_size=1000,
        )
    else:
        config = T.BertConfig(
            hidden_size=768,
            num_attention_heads=12,
            intermediate_size=3072,
            num_hidden_layers=12,
            vocab_size=30522,
        )
    nested = sn.nest(build(T.BertModel, config), sn.NestingSpace(depth=[3, 6, 12], ffn=[0.25, 0.5, 1.0]))
    path = tmp / "bert.safetensors"
    nested.save(path)
    full = sum(p.numel() for p in nested.parameters())
    return path, str(nested.space.smallest), full


def run(quick: bool) -> list:
    from .common import Result

    with tempfile.TemporaryDirectory(prefix="sortednet-bench-") as tmp:
        path, subnet, full = _checkpoint(Path(tmp), quick)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, "-m", "bench.submodel_memory", "--child", str(path), subnet, "BertModel"]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent, check=True
        )
        size = path.stat().st_size
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    imports, base, loaded, end = r["imports"], r["base"], r["loaded"], r["end"]
    peak = end["VmHWM"] - base["VmRSS"]

    def mib(x: int) -> str:
        return f"{x / MiB:.1f} MiB"

    detail = (
        f"subnet {subnet}: {r['params'] / 1e6:.1f}M of {full / 1e6:.1f}M parameters, weights "
        f"{mib(r['weight_bytes'])}; checkpoint {size / MiB:.0f} MiB; peak RSS above baseline {mib(peak)} "
        f"(anonymous {mib(end['RssAnon'] - base['RssAnon'])}, file-backed {mib(end['RssFile'] - base['RssFile'])}; "
        f"transient above the end {mib(end['VmHWM'] - end['VmRSS'])})"
        f"\n     load_submodel alone {r['seconds']:.2f} s, RSS +{mib(loaded['VmHWM'] - base['VmRSS'])} (its tensors "
        f"are views of the memory-mapped file; reading them brings the rest in); importing the model class "
        f"cost {mib(base['VmRSS'] - imports['VmRSS'])} before the baseline (counted in, the ratio would be "
        f"{(peak + base['VmRSS'] - imports['VmRSS']) / r['weight_bytes']:.2f}); tensor storages "
        f"{mib(r['storage_bytes'])} for {mib(r['weight_bytes'])} of weights; non-contiguous: "
        f"{len(r['noncontiguous'])} ({', '.join(r['noncontiguous'][:2])}{', ...' if len(r['noncontiguous']) > 2 else ''})"
    )
    return [
        Result(
            f"load_submodel(smallest) + first read, peak RSS / subnet weight bytes, BertModel {full / 1e6:.0f}M",
            peak / r["weight_bytes"],
            TARGET,
            detail=detail,
        )
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=3, metavar=("PATH", "SUBNET", "CLASS"), required=True)
    args = parser.parse_args()
    child(*args.child)
