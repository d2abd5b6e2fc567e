"""sortednet-train: the Hydra application that trains a nested model with Lightning.

    sortednet-train                                    # the default recipe (experiment=digits_vit)
    sortednet-train experiment=shakespeare_gpt2 sampler=sandwich sampler.k=4 trainer.max_steps=100
    python -m sortednet.cli.train --cfg job            # print the composed config

Read top to bottom: check the config, build data -> model -> nested model -> sampler -> module, fit, then
evaluate every subnet and write the run folder (checkpoints/last.ckpt, last.safetensors, table.csv/md).
"""

from __future__ import annotations

import itertools
import shutil
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from ..nest import nest
from ..sampling import make_sampler
from ..spec import NestingSpace
from ..train.models import offline_model_path
from ..train.module import check_distill

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
OmegaConf.register_new_resolver("offline_model", offline_model_path, replace=True)


def sampler_options(cfg: DictConfig) -> dict[str, Any]:
    options = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if k != "name"}
    return {**options, "seed": cfg.seed}


def check_config(cfg: DictConfig) -> NestingSpace:
    """Everything that can be checked before a model is built; one-line ValueErrors."""
    space = NestingSpace(OmegaConf.to_container(cfg.nesting, resolve=True))
    sampler = make_sampler(cfg.sampler.name, space, **sampler_options(cfg))
    for subnet in cfg.val.subnets or []:
        try:
            space.normalize(subnet)
        except ValueError as err:
            raise ValueError(f"val.subnets: {err}") from None
    check_distill(bool(cfg.train.distill.enabled), sampler)
    if "rank" in space.dims:
        from ..train.maestro import MaestroCallback

        MaestroCallback(**OmegaConf.to_container(cfg.train.rank, resolve=True))  # checks the options
    if cfg.optim.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(
            f"optim.schedule={cfg.optim.schedule!r} is unknown; allowed: cosine, linear, constant"
        )
    if int(cfg.train.accumulate) < 1:
        raise ValueError(f"train.accumulate={cfg.train.accumulate} is below 1; allowed: an int >= 1")
    from ..train.eval_callback import check_eval_callback

    check_eval_callback(cfg.callbacks.get("eval"), space)
    return space


def build(cfg: DictConfig):
    """Data module, nested model and Lightning module, as the config says."""
    from ..train import SortedNetModule, task_for
    from ..train.models import build_model

    space = check_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = hydra.utils.instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = build_model(
        model_cfg["class_name"], model_cfg.get("pretrained"), model_cfg.get("config"), data.model_kwargs()
    )
    nested = nest(model, space)
    sampler = make_sampler(cfg.sampler.name, nested.space, **sampler_options(cfg))
    module = SortedNetModule(
        nested,
        task_for(data.task),
        sampler,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        accumulate=cfg.train.accumulate,
        grad_clip=cfg.train.grad_clip,
        distill=OmegaConf.to_container(cfg.train.distill, resolve=True),
        val_subnets=list(cfg.val.subnets) if cfg.val.subnets else None,
        subnet_weights=OmegaConf.to_container(cfg.train.subnet_weights) if cfg.train.subnet_weights else None,
        seed=cfg.seed,
    )
    return data, module


def make_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.loggers import WandbLogger

    from ..train.callbacks import NestedCheckpoint
    from ..train.eval_callback import SubnetEvaluation
    from ..train.maestro import MaestroCallback

    run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks: list[L.Callback] = [
        NestedCheckpoint(
            run_config=run_config,
            dirpath=str(run_dir / "checkpoints"),
            **OmegaConf.to_container(cfg.callbacks.checkpoint, resolve=True),
        )
    ]
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if "rank" in cfg.nesting:
        callbacks.append(
            MaestroCallback(**OmegaConf.to_container(cfg.train.rank, resolve=True), seed=cfg.seed)
        )
    progress = cfg.callbacks.get("progress", "rich")
    if progress == "rich":
        callbacks.append(RichProgressBar())
    elif progress == "tqdm":
        callbacks.append(TQDMProgressBar())
    else:
        trainer_kwargs["enable_progress_bar"] = False
    eval_cfg = cfg.callbacks.get("eval")
    if eval_cfg and eval_cfg.get("enabled", True):
        options = {k: v for k, v in OmegaConf.to_container(eval_cfg, resolve=True).items() if k != "enabled"}
        callbacks.append(SubnetEvaluation(**options))
    logger_cfg = cfg.get("logger") or {}
    logger = hydra.utils.instantiate(logger_cfg) if logger_cfg.get("_target_") else False
    if isinstance(logger, WandbLogger):
        logger.log_hyperparams(run_config)
    return L.Trainer(**trainer_kwargs, logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))


def finish(cfg: DictConfig, trainer: L.Trainer, data, module, run_dir: Path) -> list[dict[str, Any]]:
    """Evaluate every subnet (rank 0), print the table, and save the final checkpoints with the table."""
    from ..checkpoint import load
    from ..evaluate import evaluate_subnets
    from ..report import print_table, write_table
    from ..train.callbacks import data_metadata, one_file_path
    from ..train.eval_callback import log_final
    from ..train.fsdp import is_sharded_model, save_one_file

    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last, weights_only=False)
    nested = module.nested
    if is_sharded_model(nested):  # FSDP: every rank gathers the shards into the file, rank 0 evaluates that
        save_one_file(nested, one_file_path(last), {"global_step": trainer.global_step})
        if trainer.is_global_zero:
            nested = load(one_file_path(last)).to(module.device)
    if not trainer.is_global_zero:
        return []
    rows: list[dict[str, Any]] = []
    if cfg.eval_table.enabled:
        subnets = (
            nested.space.subnets() if len(nested.space) <= cfg.eval_table.max_subnets else module.val_subnets
        )
        batches = itertools.islice(data.val_dataloader(), cfg.eval_table.max_batches)
        rows = evaluate_subnets(nested, batches, module.task, subnets)
        write_table(rows, run_dir)
        print_table(
            rows, title=f"{cfg.name}: every sub-model on the validation set", metric=module.task.metric
        )
    metadata = {
        "train_config": OmegaConf.to_container(cfg, resolve=True),
        "global_step": trainer.global_step,
        "eval_table": rows,
        **data_metadata(data),
    }
    nested.save(one_file_path(last), metadata=metadata)
    log_final(trainer, rows, run_dir, one_file_path(last), {"global_step": trainer.global_step})
    print(f"run folder: {run_dir}\n  {last}\n  {one_file_path(last)}")
    return rows


def _refuse(err: Exception, run_dir: Path) -> None:
    """A user error before training: one line, exit code 2, and no run folder left behind."""
    leftovers = (
        [p for p in run_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
        if run_dir.exists()
        else []
    )
    if run_dir.exists() and not leftovers:
        shutil.rmtree(run_dir)
    line = " ".join(str(err).split())
    print(f"sortednet-train: error: {line}", file=sys.stderr)
    sys.exit(2)


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    run_dir = Path(cfg.run_dir)
    try:
        data, module = build(cfg)
    except InstantiationException as err:  # hydra wraps the data module's own error
        _refuse(err.__cause__ or err, run_dir)
    except (ValueError, FileNotFoundError) as err:
        _refuse(err, run_dir)
    trainer = make_trainer(cfg, run_dir)
    trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)
    return finish(cfg, trainer, data, module, run_dir)


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
