"""The run config of sortednet-train, checked once: `check(cfg)` turns the composed Hydra config into the objects
the run uses (`RunConfig`), or raises a one-line ValueError naming the key, the value and what is allowed.

Nothing is built or written here: the model is neither downloaded nor allocated, the data is not read. What
only building can reveal (a data file's contents, a pretrained checkpoint's shapes) is checked where it is
built. `sortednet-train --check` runs this and prints `RunConfig.summary()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from ..bn_calibration import DEFAULT_BATCHES
from ..checks import number
from ..many import MemberSpace
from ..sampling import Sampler
from .checkpoint_io import check_resume
from .compiled import check_compile
from .eval_callback import check_eval_callback
from .maestro import MaestroCallback
from .models import ModelSpec
from .options import TEACHER_PHASE, Optim, Train, check_distill, check_distill_stitched, check_trainer
from .reorder import Reorder
from .resume import changes as resume_changes
from .stitching import Stitching

REORDER_KEYS = ("reorder", "reorder_batches")  # the `nesting` group's keys that are not dimensions


def container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def make(node: Any, **kwargs: Any) -> Any:
    """A config group's object, from its `_target_` (lists and dicts as plain Python values)."""
    return hydra.utils.instantiate(node, _convert_="all", **kwargs)


@dataclass(frozen=True)
class EvalTable:
    """`eval_table.*`: every member's metric on the validation set after training."""

    enabled: bool = True
    max_subnets: int = 64
    max_batches: int | None = None
    calibration_batches: int = DEFAULT_BATCHES  # BatchNorm networks: training batches per calibrated member

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"eval_table.enabled={self.enabled!r} is not allowed; allowed: true or false")
        number("eval_table.max_subnets", self.max_subnets, int, low=0)
        if self.max_batches is not None:
            number("eval_table.max_batches", self.max_batches, int, low=1)
        number("eval_table.calibration_batches", self.calibration_batches, int, low=1)


@dataclass
class RunConfig:
    """What `check` made of the config: every value checked, the objects the run uses."""

    name: str
    seed: int
    space: MemberSpace  # the members (a nested space: bound to the model when it is built)
    sampler: Sampler
    optim: Optim
    train: Train
    reorder: Reorder
    resumed: dict[str, Any]  # a resumed run's importance and depth orders (its weights are ordered already)
    eval_table: EvalTable
    model: ModelSpec
    stitching: Stitching | None  # the `stitch` section: anchors stitched instead of a model nested
    maestro: MaestroCallback | None  # the `rank` dimension's training (train.rank)
    val_subnets: list[Any] | None
    callbacks: dict[str, dict[str, Any]]  # the callbacks that are on, by name (instantiated by the trainer)
    nodes: dict[str, Any] = field(default_factory=dict)  # data, trainer, logger: instantiated when built
    ckpt_path: str | None = None
    resolved: dict[str, Any] = field(default_factory=dict)  # the whole config, resolved (checkpoint metadata)
    resume_changes: list[tuple[str, Any, Any]] = field(
        default_factory=list
    )  # (key, checkpoint's, now): applied

    def layer_order(self) -> str:
        """Which layers depth=k keeps, for the summary ('' without a depth dimension)."""
        if "depth" not in getattr(self.space, "values", {}):
            return ""
        order = getattr(self.space, "depth_order", None)
        if order is None:
            return "depth=k keeps the first k layers (nesting.depth_order=prefix)"
        return f"depth=k keeps the k first of nesting.depth_order={order}, in their original order"

    def distilled(self) -> str:
        distill = self.train.distill
        if not distill.enabled:
            return "off"
        if distill.teacher is None:
            return f"in place from the largest member of each step (alpha {distill.alpha}, T {distill.temperature})"
        if distill.teacher == TEACHER_PHASE:
            return f"from the full model fine-tuned alone first for {distill.teacher_steps} steps, frozen"
        return f"from the frozen teacher {distill.teacher}"

    def summary(self) -> list[tuple[str, str]]:
        """One screen: what the run will train and how (sortednet-train --check)."""
        space, trainer = self.space, self.nodes["trainer"]
        smallest, largest = space.smallest, space.largest
        n = self.eval_table.max_subnets
        evaluated = (
            f"{len(space)} members"
            if len(space) <= n
            else f"{n} of {len(space)} members (cost-stratified) + val.subnets"
        )
        what = self.model.pretrained or f"a new {self.model.class_name}"
        cost = getattr(self.sampler, "cost", "params")
        by = f", by {cost} (measured when the model is built)" if cost != "params" else ""
        return [
            ("run", f"{self.name} (seed {self.seed})"),
            ("model", "anchors " + ", ".join(self.stitching.anchors) if self.stitching else what),
            ("members", f"{len(space)} (smallest {smallest}, largest {largest})"),
            ("sampler", f"{self.sampler.name}, k={self.sampler.k} per step{by}"),
            ("steps", f"trainer.max_steps={trainer.get('max_steps')}, accumulate={self.train.accumulate}"),
            ("optim", f"AdamW lr={self.optim.lr} {self.optim.schedule}, update={self.optim.update}"),
            ("data", str(self.nodes["data"].get("_target_", "")).rsplit(".", 1)[-1]),
            (
                "validation",
                ", ".join(map(str, self.val_subnets)) if self.val_subnets else "smallest, middle, largest",
            ),
            ("eval table", f"{evaluated} on the validation set" if self.eval_table.enabled else "off"),
            *((("layers", order),) if (order := self.layer_order()) else ()),
            ("distill", self.distilled()),
            ("resume", self.ckpt_path or "no"),
            *(
                (f"  {key}", f"{new!r} (the checkpoint's {old!r}), applied")
                for key, old, new in self.resume_changes
            ),
        ] + (
            [
                (
                    "anchors",
                    f"each trained alone first for stitch.pretrain_steps={self.stitching.pretrain_steps}",
                )
            ]
            if self.stitching and self.stitching.pretrain_steps
            else []
        )


def split_nesting(nesting: Mapping[str, Any]) -> tuple[dict[str, Any], Reorder]:
    """The `nesting` config as (the space's own node, the Reorder options)."""
    node = dict(nesting)
    options = {k: node.pop(k) for k in REORDER_KEYS if k in node}
    return node, Reorder(options.get("reorder"), options.get("reorder_batches", 4))


def callback_entries(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The `callbacks` entries that are on (not null, not `enabled: false`), each class looked up now so that a
    misspelt one fails before the data and the model load."""
    entries = container(cfg.callbacks) or {}
    on = {
        name: {k: v for k, v in entry.items() if k != "enabled"}
        for name, entry in entries.items()
        if entry is not None and entry.get("enabled", True)
    }
    for entry in on.values():
        hydra.utils.get_object(entry["_target_"])
    return on


def check(cfg: DictConfig) -> RunConfig:
    """Everything that can be checked before a file is written or a model is built; one-line ValueErrors.
    Each group's object checks its own values when made (ModelSpec, the space, the sampler, Optim, Train)."""
    model = make(cfg.model)
    make(cfg.data)  # its values and the packages a builtin dataset needs; nothing is read
    nesting, reorder = split_nesting(container(cfg.nesting))
    stitching = Stitching.from_config(container(cfg.stitch)) if cfg.get("stitch") else None
    if stitching is not None and reorder.method is not None:
        raise ValueError(f"nesting.reorder={reorder.method} orders a nested model; with stitch: null")
    space = stitching.space() if stitching is not None else make(nesting)
    ckpt_path = str(cfg.ckpt_path) if cfg.ckpt_path else None
    resumed = reorder.check(space, ckpt_path) if stitching is None else {}
    sampler = make(cfg.sampler, seed=cfg.seed)(space)  # checks the seed too
    seed = sampler.seed
    val_subnets = [_member(space, s, "val.subnets") for s in cfg.val.subnets or []] or None
    train_node = container(cfg.train)
    rank = train_node.pop("rank", None) or {}
    train = Train(**train_node, members=space.normalize)
    check_compile(train.compile, rank.get("sampling") if "rank" in space.dims else None)
    if train.compile and getattr(sampler, "per_layer", False):
        raise ValueError(
            "train.compile with sampler.per_layer=true would compile a graph for almost every step (each draw is "
            "a new sub-model); allowed with train.compile: sampler.per_layer=false"
        )
    check_distill(train.distill, sampler)
    if stitching is not None:
        check_distill_stitched(train.distill)
    maestro = MaestroCallback(**rank, seed=seed) if "rank" in space.dims else None
    callbacks = callback_entries(cfg)
    check_eval_callback(callbacks.get("eval"), space)
    trainer = {k: v for k, v in container(cfg.trainer).items() if not k.startswith("_")}
    check_trainer(trainer)
    check_latency_cost(sampler, trainer)
    optim = Optim(**container(cfg.optim))
    strategy = str(trainer.get("strategy", "auto"))
    if optim.update == "touched" and "fsdp" in strategy:
        raise ValueError(
            f"optim.update='touched' is not supported with trainer.strategy={strategy} (the optimizer holds "
            "shards, not the tensors the subnets slice); allowed with FSDP: optim.update=all"
        )
    if optim.update == "touched" and stitching is not None:
        raise ValueError(
            "optim.update='touched' records the slices nested wrappers read; a stitched model runs whole "
            "tensors: allowed: optim.update=all"
        )
    config = resolved(cfg)
    changed = []
    if ckpt_path:
        check_resume(ckpt_path, space.to_dict())
        changed = resume_changes(ckpt_path, config)
        config["resumed"] = {"from": ckpt_path, "changed": {k: [old, new] for k, old, new in changed}}
    return RunConfig(
        name=str(cfg.name),
        seed=seed,
        space=space,
        sampler=sampler,
        optim=optim,
        train=train,
        reorder=reorder,
        resumed=resumed,
        eval_table=EvalTable(**container(cfg.eval_table)),
        model=model,
        stitching=stitching,
        maestro=maestro,
        val_subnets=val_subnets,
        callbacks=callbacks,
        nodes={"data": container(cfg.data), "trainer": cfg.trainer, "logger": cfg.get("logger")},
        ckpt_path=ckpt_path,
        resolved=config,
        resume_changes=changed,
    )


def check_latency_cost(sampler: Sampler, trainer: Mapping[str, Any]) -> None:
    """Latency is timed, not counted: on several ranks each would group the members differently."""
    if getattr(sampler, "cost", "params") != "latency":
        return
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    one = (
        devices == 1
        or (isinstance(devices, list) and len(devices) == 1)
        or (devices == "auto" and trainer.get("accelerator") == "cpu")
    )
    if not one or nodes != 1:
        raise ValueError(
            f"sampler.cost=latency with trainer.devices={devices} trainer.num_nodes={nodes}: each rank would time "
            "the members differently; allowed: sampler.cost=flops or params, or one device"
        )


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The whole config, resolved (what the checkpoint records); `run_dir` as given when only Hydra's app can
    resolve it (a config composed outside it: --check, benchmarks)."""
    out = {key: container(cfg[key]) for key in cfg if key != "run_dir"}
    try:
        out["run_dir"] = cfg.run_dir
    except Exception:  # ${hydra:runtime.output_dir} outside Hydra's app
        out["run_dir"] = OmegaConf.to_container(cfg, resolve=False).get("run_dir")  # type: ignore[union-attr]
    return out


def _member(space: MemberSpace, member: Any, key: str) -> Any:
    try:
        return space.normalize(member)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None
