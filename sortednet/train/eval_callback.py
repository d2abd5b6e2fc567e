"""Evaluation during and after training: per-subnet metrics through the Lightning logger at validation time,
and with a W&B logger the full evaluation as a wandb.Table, a Pareto scatter and (online) a model artifact.

Only rank 0 evaluates (every rank when parameters are sharded, FSDP2), logs, plots and uploads; the
other ranks wait at a barrier.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from ..evaluate import evaluate, headline_metric
from ..many import MemberSpace
from ..measure import pick_subnets
from ..report import pareto_front, plot_pareto


class _Limited:
    def __init__(self, loader: Any, n: int | None) -> None:
        self.loader, self.n = loader, n

    def __iter__(self):
        return iter(itertools.islice(self.loader, self.n))


def check_eval_callback(section: Mapping[str, Any] | None, space: MemberSpace) -> None:
    """The callbacks.eval config checked before anything is built (one-line ValueErrors)."""
    if not section or not section.get("enabled", True):
        return
    spec = section.get("subnets")
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec < 1:
            raise ValueError(
                f"callbacks.eval.subnets={spec} is below 1; allowed: an int >= 1, all, or a list"
            )
    elif spec not in (None, "all"):
        for subnet in [spec] if isinstance(spec, str) else spec:
            try:
                space.normalize(subnet)
            except ValueError as err:
                raise ValueError(f"callbacks.eval.subnets: {err}") from None
    if int(section.get("every_n_val", 1)) < 1:
        raise ValueError(
            f"callbacks.eval.every_n_val={section['every_n_val']} is below 1; allowed: an int >= 1"
        )


class SubnetEvaluation(L.Callback):
    """At the end of every `every_n_val`-th validation, evaluate `subnets` (an int N: a cost-stratified sample
    of N with the smallest and the largest; "all"; or a list of specs) on `max_batches` validation batches
    (null: as many as the trainer validates) and log `eval/<metric>/<subnet>` (and
    `eval/flops|latency_ms/<subnet>` when measured) to every logger, at the current global step."""

    def __init__(
        self,
        subnets: int | str | Sequence[str] | None = 6,
        max_batches: int | None = None,
        every_n_val: int = 1,
        flops: bool = False,
        latency: bool = False,
        seed: int = 0,
    ) -> None:
        if every_n_val < 1:
            raise ValueError(f"callbacks.eval.every_n_val={every_n_val} is below 1; allowed: an int >= 1")
        self.spec = (
            list(subnets) if isinstance(subnets, Sequence) and not isinstance(subnets, str) else subnets
        )
        self.max_batches, self.every_n_val = max_batches, int(every_n_val)
        self.flops, self.latency, self.seed = bool(flops), bool(latency), int(seed)
        self.subnets: list = []
        self._validations = 0
        self.last_rows: list[dict[str, Any]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        try:
            self.subnets = pick_subnets(pl_module.nested.space, self.spec, 64, self.seed)
        except ValueError as err:
            raise ValueError(f"callbacks.eval.{err}") from None  # "callbacks.eval.subnets: ..."

    def _batches(self, trainer: L.Trainer) -> _Limited:
        n = self.max_batches
        if n is None:
            counts = getattr(trainer, "num_val_batches", None) or []
            n = int(counts[0]) if counts and counts[0] != float("inf") else None
        loader = (
            trainer.datamodule.val_dataloader() if trainer.datamodule is not None else trainer.val_dataloaders
        )
        return _Limited(loader, n)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.subnets:
            return
        self._validations += 1
        if self._validations % self.every_n_val:
            return
        # sharded parameters (FSDP2 DTensors): every forward all-gathers, so every rank runs the evaluation
        sharded = any(type(p).__name__ == "DTensor" for p in pl_module.nested.parameters())
        if trainer.is_global_zero or sharded:
            rows = evaluate(
                pl_module.nested,
                self._batches(trainer),
                pl_module.task,
                self.subnets,
                flops=self.flops,
                latency=self.latency,
            )
            self.last_rows = rows
        if trainer.is_global_zero:
            metrics = {
                f"eval/{key}/{row['subnet']}": float(value)
                for row in self.last_rows
                for key, value in row.items()
                if key not in ("subnet", "params", "latency_ok")
            }
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        trainer.strategy.barrier()


def wandb_run(trainer: L.Trainer) -> Any | None:
    """The W&B run of the trainer's WandbLogger on rank 0, else None."""
    if not trainer.is_global_zero:
        return None
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment
    return None


def wants_artifact(run: Any) -> bool:
    """Upload the checkpoint only from an online run (offline runs are synced later, without the file)."""
    mode = getattr(getattr(run, "settings", None), "mode", None)
    return not getattr(run, "offline", True) and mode not in ("offline", "disabled", "dryrun")


def log_final(
    trainer: L.Trainer,
    rows: Sequence[Mapping[str, Any]],
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path | None:
    """After training (rank 0): the Pareto plot of the final evaluation into the run folder; with a W&B
    logger, the evaluation as a wandb.Table, a W&B scatter of metric against params, the plot as an image and,
    when the run is online, the one-file checkpoint as a model artifact. Returns the plot's path."""
    if not rows or not trainer.is_global_zero:
        return None
    metric, higher = headline_metric(rows)
    costs = [c for c in ("params", "latency_ms") if c in rows[0]]
    plot = plot_pareto(rows, Path(run_dir) / "pareto.png", metric, higher, costs)
    run = wandb_run(trainer)
    if run is None:
        return plot
    import wandb

    front = {str(rows[i]["subnet"]) for i in pareto_front(rows, "params", metric, higher)}
    columns = [*rows[0], "pareto"]
    table = wandb.Table(columns=columns, data=[[*r.values(), str(r["subnet"]) in front] for r in rows])
    run.log(
        {
            "eval/table": table,
            "eval/pareto_scatter": wandb.plot.scatter(
                table, "params", metric, title=f"{metric} against parameters, every sub-model"
            ),
            "eval/pareto": wandb.Image(str(plot)),
        }
    )
    for row in rows:
        if str(row["subnet"]) in front:
            run.summary[f"pareto/{metric}/{row['subnet']}"] = row[metric]
    if checkpoint is not None and wants_artifact(run):
        artifact = wandb.Artifact(f"sortednet-{run.id}", type="model", metadata=dict(metadata or {}))
        artifact.add_file(str(checkpoint))
        run.log_artifact(artifact, aliases=["latest"])
    return plot
