"""sortednet-train: the Hydra application that trains a nested model with Lightning.

    sortednet-train                                    # the default recipe (experiment=digits_vit)
    sortednet-train --list                             # the recipes; --copy NAME FILE.yaml, --config FILE.yaml
    sortednet-train experiment=shakespeare_gpt2 sampler=sandwich sampler.k=4 trainer.max_steps=100
    python -m sortednet.cli.train --cfg job            # print the composed config

Read top to bottom: check the config (nothing written yet), lock the run folder, build data -> model ->
nested model -> sampler -> module, fit, then evaluate every subnet and write the run folder
(checkpoints/last.ckpt + last.safetensors, committed as a pair; table.csv/md).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from ..checks import number
from ..nest import nest
from ..pooling import POOLINGS
from ..sampling import Sampler, make_sampler
from ..spec import NestingSpace
from ..train.models import offline_model_path
from ..train.module import check_distill
from ..train.options import Distill, Optim, Train, check_trainer
from .recipes import CONF_DIR, handle

OmegaConf.register_new_resolver("offline_model", offline_model_path, replace=True)
PROGRESS = ("rich", "tqdm", "none")


@dataclass
class Checked:
    """What check_config built from the config: the values the rest of the run uses."""

    space: NestingSpace
    sampler: Sampler
    optim: Optim
    train: Train


def container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def sampler_options(cfg: DictConfig) -> dict[str, Any]:
    options = {k: v for k, v in container(cfg.sampler).items() if k != "name"}
    return {**options, "seed": cfg.seed}


def check_config(cfg: DictConfig) -> Checked:
    """Everything that can be checked before a file is written or a model is built; one-line ValueErrors."""
    number("seed", cfg.seed, int, low=0)
    space = NestingSpace(container(cfg.nesting))
    sampler = make_sampler(cfg.sampler.name, space, **sampler_options(cfg))
    for subnet in cfg.val.subnets or []:
        try:
            space.normalize(subnet)
        except ValueError as err:
            raise ValueError(f"val.subnets: {err}") from None
    train_cfg = container(cfg.train)
    train = Train(
        accumulate=train_cfg["accumulate"],
        grad_clip=train_cfg["grad_clip"],
        subnet_weights=train_cfg.get("subnet_weights") or {},
        distill=Distill(**train_cfg["distill"]),
        max_nonfinite_steps=train_cfg.get("max_nonfinite_steps", 3),
    )
    for subnet in train.subnet_weights:
        space.normalize(subnet)
    check_distill(train.distill.enabled, sampler)
    if "rank" in space.dims:
        from ..train.maestro import MaestroCallback

        MaestroCallback(**train_cfg["rank"])  # checks the options
    from ..train.eval_callback import check_eval_callback

    check_eval_callback(cfg.callbacks.get("eval"), space)
    check_trainer(container(cfg.trainer))
    if cfg.callbacks.get("progress", "rich") not in PROGRESS:
        raise ValueError(
            f"callbacks.progress={cfg.callbacks.progress!r} is unknown; allowed: {', '.join(PROGRESS)}"
        )
    check_pretrained(cfg.model.get("pretrained"))
    if cfg.model.get("pooling") not in (None, *POOLINGS):
        raise ValueError(
            f"model.pooling={cfg.model.pooling!r} is unknown; allowed: {', '.join(POOLINGS)} or null"
        )
    if cfg.ckpt_path:
        from ..train.checkpoint_io import check_resume

        check_resume(cfg.ckpt_path, space.to_dict())
    return Checked(space, sampler, Optim(**container(cfg.optim)), train)


def check_pretrained(name: str | None) -> None:
    """A local path that is missing is refused here; a hub name is tried by from_pretrained (offline: refused
    there, rewritten to one line by `refusing`)."""
    if name and str(name).startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
        raise ValueError(
            f"model.pretrained={name!r} does not exist; give a folder with config.json or a Hugging Face Hub name"
        )


def build(cfg: DictConfig, checked: Checked):
    """Data module, nested model and Lightning module, as the config says."""
    from ..train import SortedNetModule, task_for
    from ..train.models import build_model

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = hydra.utils.instantiate(cfg.data)
    data.prepare_data()
    data.setup("fit")
    data.train_dataloader()  # its checks (a batch larger than the data) before anything trains
    model_cfg = container(cfg.model)
    model = build_model(
        model_cfg["class_name"], model_cfg.get("pretrained"), model_cfg.get("config"), data.model_kwargs()
    )
    # from_pretrained returns modules in eval mode; fine-tuning runs with dropout, as transformers' Trainer does
    model.train(model_cfg.get("train_mode", True))
    nested = nest(model, checked.space, pooling=model_cfg.get("pooling"))
    sampler = make_sampler(cfg.sampler.name, nested.space, **sampler_options(cfg))
    module = SortedNetModule(
        nested,
        task_for(data.task),
        sampler,
        optim=checked.optim,
        accumulate=checked.train.accumulate,
        grad_clip=checked.train.grad_clip,
        distill=checked.train.distill,
        val_subnets=list(cfg.val.subnets) if cfg.val.subnets else None,
        subnet_weights=checked.train.subnet_weights,
        seed=cfg.seed,
        max_nonfinite_steps=checked.train.max_nonfinite_steps,
    )
    return data, module


def make_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.loggers import WandbLogger

    from ..train.callbacks import NestedCheckpoint
    from ..train.checkpoint_io import AtomicCheckpointIO
    from ..train.eval_callback import SubnetEvaluation
    from ..train.maestro import MaestroCallback

    run_config = container(cfg)
    callbacks: list[L.Callback] = [
        NestedCheckpoint(
            run_config=run_config, dirpath=str(run_dir / "checkpoints"), **container(cfg.callbacks.checkpoint)
        )
    ]
    trainer_kwargs = container(cfg.trainer)
    if "rank" in cfg.nesting:
        callbacks.append(MaestroCallback(**container(cfg.train.rank), seed=cfg.seed))
    progress = cfg.callbacks.get("progress", "rich")
    if not trainer_kwargs.get("enable_progress_bar", True):
        progress = "none"
    if progress == "rich":
        callbacks.append(RichProgressBar())
    elif progress == "tqdm":
        callbacks.append(TQDMProgressBar())
    else:
        trainer_kwargs["enable_progress_bar"] = False
    eval_cfg = cfg.callbacks.get("eval")
    if eval_cfg and eval_cfg.get("enabled", True):
        callbacks.append(SubnetEvaluation(**{k: v for k, v in container(eval_cfg).items() if k != "enabled"}))
    logger_cfg = cfg.get("logger") or {}
    logger = hydra.utils.instantiate(logger_cfg) if logger_cfg.get("_target_") else False
    if isinstance(logger, WandbLogger):
        logger.log_hyperparams(run_config)
    return L.Trainer(
        **trainer_kwargs,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


def finish(cfg: DictConfig, trainer: L.Trainer, data, module, run_dir: Path) -> list[dict[str, Any]]:
    """Commit the final checkpoint pair, then (rank 0) evaluate every subnet, print the table and add it to
    the one-file checkpoint's header (a header rewrite: the pair stays of one step)."""
    from ..checkpoint import load, update_metadata
    from ..evaluate import evaluate_subnets
    from ..report import print_table, write_table
    from ..train.checkpoint_io import one_file_path, save_pair
    from ..train.eval_callback import log_final
    from ..train.fsdp import is_sharded_model

    last = run_dir / "checkpoints" / "last.ckpt"
    metadata = {
        "train_config": container(cfg),
        "global_step": trainer.global_step,
        **_data_metadata(data),
    }
    save_pair(trainer, last, metadata)
    if not trainer.is_global_zero:
        return []
    nested = module.nested
    if is_sharded_model(nested):  # FSDP: rank 0 evaluates the gathered model of the file
        nested = load(one_file_path(last)).to(module.device)
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
        update_metadata(one_file_path(last), eval_table=rows)
    log_final(trainer, rows, run_dir, one_file_path(last), {"global_step": trainer.global_step})
    print(f"run folder: {run_dir}\n  {last}\n  {one_file_path(last)}")
    return rows


def _data_metadata(data: Any) -> dict[str, Any]:
    from ..train.callbacks import data_metadata

    return data_metadata(data)


# ---- the edge: user errors become one line ------------------------------------------------------------
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import OmegaConfBaseException

    return (*USER_ERRORS, HydraException, MisconfigurationException, OmegaConfBaseException)


def one_line(err: BaseException) -> str:
    while err.__cause__ is not None and type(err).__name__ == "InstantiationException":
        err = err.__cause__  # hydra wraps a data module's or model's own error
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, ValueError) else f"{type(err).__name__}: {text}"


@contextmanager
def refusing(run_dir: Path, made_by_us: bool):
    """A user error before training: one line on stderr, exit code 2, and the run folder removed if this run
    made it and wrote nothing in it yet (SORTEDNET_DEBUG=1: the traceback instead)."""
    try:
        yield
    except _user_error_types() as err:
        if os.environ.get("SORTEDNET_DEBUG"):
            raise
        if made_by_us:
            _remove_if_empty(run_dir)
        print(f"sortednet-train: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


def _remove_if_empty(run_dir: Path) -> None:
    from ..train.run_lock import LOCK_NAME

    if not run_dir.exists():
        return
    ours = {".hydra", LOCK_NAME}
    if all(p.name in ours or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)


def write_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra would write in .hydra/ (sortednet-train sets hydra.output_subdir=null so that nothing is
    written before the run folder is locked)."""
    from hydra.core.hydra_config import HydraConfig

    from ..atomic import write_text

    write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    if HydraConfig.initialized():
        overrides = list(HydraConfig.get().overrides.task)
        write_text(run_dir / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(overrides)))


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    from ..train.checkpoint_io import recover
    from ..train.module import Diverged
    from ..train.run_lock import RunLock, is_launching_process

    run_dir = Path(cfg.run_dir)
    made_by_us = not run_dir.exists() or not any(
        p.suffix != ".log" for p in run_dir.iterdir()
    )  # Hydra makes the folder (and its log) just before this runs
    with refusing(run_dir, made_by_us):
        checked = check_config(cfg)
    lock = RunLock(run_dir)
    launching = is_launching_process()
    if launching:
        with refusing(run_dir, made_by_us=False):  # the folder is another run's: touch nothing
            lock.acquire()
        write_run_config(cfg, run_dir)
        for line in recover(run_dir / "checkpoints"):
            print(f"sortednet-train: {line} (left by a run that was killed)", file=sys.stderr)
    try:
        with refusing(run_dir, made_by_us):
            data, module = build(cfg, checked)
            trainer = make_trainer(cfg, run_dir)
        try:
            trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)
        except Diverged as err:
            print(f"sortednet-train: {' '.join(str(err).split())}", file=sys.stderr)
            sys.exit(1)
        return finish(cfg, trainer, data, module, run_dir)
    finally:
        lock.release()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def main() -> None:
    """`sortednet-train`: Hydra's command line, plus --list, --copy NAME FILE.yaml and --config FILE.yaml."""
    argv = handle(sys.argv[1:])
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
        hydra_main()


if __name__ == "__main__":
    main()
