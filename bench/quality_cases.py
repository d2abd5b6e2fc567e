"""What bench.quality runs per recipe: the shapes, the quick settings, the twin's config and the nested run's.

A twin is the recipe's config with a space of one member: a nesting space of that one shape (so it starts from
the same init or pretrained weights, cut to its shape), or `stitch.members` of that one stitch or anchor (the
same pretrained anchors and least-squares init); every subnet of a step trained (one), no distillation, no
per-subnet weights, Maestro's rank fixed. Both sides are judged by the eval table at the end; the nested runs
also validate the evaluated shapes every few steps, for their curves (validation changes no weight).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

# every benchmark run: no progress bar, no per-validation subnet table, logs only where asked
COMMON = ["callbacks.progress=null", "logger=none", "callbacks.eval.enabled=false"]
CSV_LOGGER = {
    "_target_": "sortednet.train.loggers.CSVLogger",
    "save_dir": "${run_dir}",
    "name": "csv",
    "version": "",
}
PROBE = "bench.quality_runs.Probe"

DIGITS_SEEDS = (
    "the stratified train/validation split (data.seed = seed: each seed its own split, "
    "one split for both sides)"
)


@dataclass
class Case:
    recipe: str
    metric: str  # accuracy | loss (bits per character in the report)
    full_shapes: int | None  # twins in the full run (None: every sub-model), by params rank
    quick_shapes: int
    quick: list[str]  # overrides of the quick run (fewer steps, smaller data)
    seeds_vary: str  # what else than init, data order, dropout and sampler draws the seed varies
    full: list[str] = field(default_factory=list)
    variants: dict[str, list[str]] = field(default_factory=lambda: {"": []})
    quick_seeds: int = 3  # fewer when 3 do not fit in minutes (said in the output)
    curve_points: int = 10  # validations per nested run at the twins' step count


CASES = {
    "digits_vit": Case("digits_vit", "accuracy", 6, 3, ["trainer.max_steps=200"], DIGITS_SEEDS),
    "swin_digits": Case("swin_digits", "accuracy", None, 3, ["trainer.max_steps=200"], DIGITS_SEEDS),
    "maestro_digits": Case("maestro_digits", "accuracy", 6, 3, ["trainer.max_steps=200"], DIGITS_SEEDS),
    "slimmable_resnet_digits": Case(
        "slimmable_resnet_digits", "accuracy", None, 3, ["trainer.max_steps=150"], DIGITS_SEEDS
    ),
    "shakespeare_gpt2": Case(
        "shakespeare_gpt2",
        "loss",
        6,
        3,
        [
            "trainer.max_steps=300",
            "data.max_chars=1000000",
            "eval_table.max_batches=20",
        ],
        "nothing else: the validation text is the corpus's fixed last 5%",
    ),
    "minilm_nested": Case(
        "minilm_nested",
        "accuracy",
        None,
        3,
        ["trainer.max_steps=100", "data.max_length=64", "data.batch_size=32"],
        "the head's init; not the split: the held-out plays (one per genre) are fixed",
        variants={"cls": ["model.pooling=cls"], "mean": ["model.pooling=mean"]},
        quick_seeds=2,
        curve_points=4,
    ),
    "snnet_digits": Case(
        "snnet_digits",
        "accuracy",
        None,
        3,
        ["trainer.max_steps=100", "stitch.pretrain_steps=200"],
        DIGITS_SEEDS + " and the anchors' pretraining (stitch.pretrain_steps, seeded by seed)",
    ),
    "snnetv2_digits": Case(
        "snnetv2_digits",
        "accuracy",
        6,
        3,
        ["trainer.max_steps=100", "stitch.pretrain_steps=200"],
        DIGITS_SEEDS + " and the anchors' pretraining (stitch.pretrain_steps, seeded by seed)",
    ),
}


def compose(recipe: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sortednet.cli.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=[f"experiment={recipe}", *COMMON, *overrides])


def pick_shapes(ordered: list[str], n: int | None) -> list[str]:
    """`n` members of `ordered` (cheapest first): the smallest, the middle and the largest, then ranks evenly
    spaced on ever finer grids; every member when n is None or not smaller."""
    last = len(ordered) - 1
    if n is None or n >= len(ordered):
        return list(ordered)
    ranks = [0, last, last // 2]
    parts = 4
    while len(set(ranks)) < n:
        ranks += [round(i * last / parts) for i in range(1, parts, 2)]
        parts *= 2
    chosen: list[int] = []
    for r in ranks:
        if r not in chosen and len(chosen) < n:
            chosen.append(r)
    return [ordered[r] for r in sorted(chosen)]


def edited(cfg: DictConfig) -> DictConfig:
    out = copy.deepcopy(cfg)
    OmegaConf.set_struct(out, False)
    return out


def with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    out = edited(cfg)
    out.seed = seed
    return out


def ending(cfg: DictConfig, steps: int) -> DictConfig:
    """`steps` optimizer steps, one checkpoint at the end."""
    out = edited(cfg)
    out.trainer.max_steps = steps
    out.callbacks.checkpoint.every_n_train_steps = steps
    return out


def probe(cfg: DictConfig, batch_losses: bool) -> dict[str, Any]:
    return {"_target_": PROBE, "max_batches": cfg.eval_table.max_batches, "batch_losses": batch_losses}


def twin_config(cfg: DictConfig, member: str, metric: str) -> DictConfig:
    """The recipe's config training `member` alone (see the module docstring); validated only at the end."""
    out = edited(cfg)
    if out.get("stitch"):
        out.stitch.members = [member]
    else:
        out.nesting = one_shape_nesting(out, member)
        out.model.head = "shared"  # a head per depth of a one-depth space is the shared head
        out.train.rank = {**out.train.rank, "sampling": "per_model", "group_lasso": 0.0, "shrink_every": 0}
    out.sampler = {"_target_": "sortednet.sampling.AllSampler", "_partial_": True}
    out.train.distill.enabled = False
    out.train.subnet_weights = None
    out.val.subnets = None
    out.trainer.limit_val_batches = 0
    out.callbacks.probe = probe(out, batch_losses=metric == "loss")
    return out


def one_shape_nesting(cfg: DictConfig, shape: str) -> dict[str, Any]:
    from sortednet.train.config import check

    nesting = OmegaConf.to_container(cfg.nesting, resolve=True)
    point = check(cfg).space.normalize(shape)
    single: dict[str, Any] = {"_target_": nesting["_target_"], **{d: [v] for d, v in point.items()}}
    kept = ("reorder", "reorder_batches", "rank_targets", "depth_order")  # the same start and the same layers
    single.update({k: nesting[k] for k in kept if k in nesting})
    return single


def nested_config(cfg: DictConfig, shapes: list[str], every: int) -> DictConfig:
    """The nested run: validation curves of `shapes` every `every` batches on the eval table's batches, into
    metrics.csv; the eval table of `shapes` only (eval_table.max_subnets=0 tables the validation subnets)."""
    out = edited(cfg)
    out.val.subnets = list(shapes)
    out.trainer.val_check_interval = every
    out.trainer.limit_val_batches = out.eval_table.max_batches or 1.0
    out.eval_table.max_subnets = 0
    out.logger = dict(CSV_LOGGER)
    out.callbacks.probe = probe(out, batch_losses=False)
    return out


def sizing_config(cfg: DictConfig) -> DictConfig:
    """One step, one validation batch: the eval table gives every sub-model's exact parameter count."""
    out = ending(cfg, 1)
    out.trainer.limit_val_batches = 0
    out.eval_table.max_batches = 1
    out.eval_table.max_subnets = 10**6
    if out.get("stitch"):
        out.stitch.pretrain_steps = 0
    return out
