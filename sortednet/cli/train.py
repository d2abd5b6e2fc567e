"""sortednet-train: the Hydra application that trains a nested model with Lightning.

    sortednet-train                                    # the default recipe (experiment=digits_vit)
    sortednet-train --list                             # the recipes; --copy NAME FILE.yaml, --config FILE.yaml
    sortednet-train experiment=shakespeare_gpt2 sampler=sandwich sampler.k=4 trainer.max_steps=100
    python -m sortednet.cli.train --cfg job            # print the composed config

Read top to bottom: check the config (nothing written yet), lock the run folder, build data -> model ->
nested model (or, with a `stitch` section, anchors -> stitched model) -> sampler -> module, fit, then evaluate every subnet and write the run folder
(checkpoints/last.ckpt + last.safetensors, committed as a pair; table.csv/md).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from ..checks import number
from ..many import MemberSpace
from ..sampling import Sampler
from ..train.calibrate import Reorder, check_resume_reorder, split_nesting
from ..train.compiled import check_compile, compile_backend
from ..train.models import ModelSpec, offline_model_path
from ..train.module import check_distill
from ..train.options import Optim, Train, check_trainer
from ..train.stitching import Stitching
from .recipes import CONF_DIR, handle

OmegaConf.register_new_resolver("offline_model", offline_model_path, replace=True)


@dataclass
class Checked:
    """What check_config made from the config: the values the rest of the run uses."""

    model: ModelSpec
    space: MemberSpace
    make_sampler: Callable[[MemberSpace], Sampler]
    optim: Optim
    train: Train
    reorder: Reorder
    stitching: Stitching | None = None  # the `stitch` section: anchors stitched instead of a model nested


def container(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def make(node: Any, **kwargs: Any) -> Any:
    """A config group's object, from its `_target_` (lists and dicts as plain Python values)."""
    return hydra.utils.instantiate(node, _convert_="all", **kwargs)


def callback_configs(cfg: DictConfig) -> dict[str, Any]:
    """The `callbacks` entries that are on: not null, not `enabled: false`."""
    entries = container(cfg.callbacks) or {}
    return {
        name: {k: v for k, v in entry.items() if k != "enabled"}
        for name, entry in entries.items()
        if entry is not None and entry.get("enabled", True)
    }


def check_config(cfg: DictConfig) -> Checked:
    """Everything that can be checked before a file is written or a model is built; one-line ValueErrors. Each
    group's object checks its own values when made (ModelSpec, NestingSpace, the sampler, Optim, Train)."""
    number("seed", cfg.seed, int, low=0)
    model = make(cfg.model)
    nesting, reorder = split_nesting(container(cfg.nesting))
    stitching = Stitching.from_config(container(cfg.stitch)) if cfg.get("stitch") else None
    if stitching is not None:
        if reorder.method is not None:
            raise ValueError(f"nesting.reorder={reorder.method} orders a nested model; with stitch: null")
        space = stitching.space()
    else:
        space = make(nesting)
        reorder.check(space)
    sampler_for = make(cfg.sampler, seed=cfg.seed)
    sampler = sampler_for(space)
    for subnet in cfg.val.subnets or []:
        try:
            space.normalize(subnet)
        except ValueError as err:
            raise ValueError(f"val.subnets: {err}") from None
    train_cfg = container(cfg.train)
    rank = train_cfg.pop("rank", None)
    train = Train(**train_cfg)
    check_compile(
        compile_backend(train.compile), (rank or {}).get("sampling") if "rank" in space.dims else None
    )
    for subnet in train.subnet_weights:
        space.normalize(subnet)
    check_distill(train.distill.enabled, sampler)
    if "rank" in space.dims:
        from ..train.maestro import MaestroCallback

        MaestroCallback(**rank)  # checks the options
    from ..train.eval_callback import check_eval_callback

    callbacks = callback_configs(cfg)
    for entry in callbacks.values():  # a misspelt class fails here, before the data and the model load
        hydra.utils.get_object(entry["_target_"])
    check_eval_callback(callbacks.get("eval"), space)
    check_trainer({k: v for k, v in container(cfg.trainer).items() if not k.startswith("_")})
    if cfg.ckpt_path:
        from ..train.checkpoint_io import check_resume

        check_resume(cfg.ckpt_path, space.to_dict())
        check_resume_reorder(cfg.ckpt_path, reorder)
    optim = Optim(**container(cfg.optim))
    strategy = str(cfg.trainer.get("strategy", "auto"))
    if optim.update == "touched" and "fsdp" in strategy:
        raise ValueError(
            f"optim.update='touched' is not supported with trainer.strategy={strategy} (the optimizer holds "
            "shards, not the tensors the subnets slice); allowed with FSDP: optim.update=all"
        )
    return Checked(model, space, sampler_for, optim, train, reorder, stitching)


def build(cfg: DictConfig, checked: Checked):
    """Data module, nested model and Lightning module, as the config says."""
    from ..train import SortedNetModule, task_for
    from ..train.calibrate import nest_for_training

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    data = make(cfg.data)
    data.prepare_data()
    data.setup("fit")
    data.train_dataloader()  # its checks (a batch larger than the data) before anything trains
    model = None if checked.stitching else checked.model.build(data.model_kwargs())
    task = task_for(data.task)
    nested = (
        stitched_for_training(checked, data, task, cfg.seed, bool(cfg.ckpt_path))
        if checked.stitching
        else nest_for_training(
            model,
            checked.space,
            checked.reorder,
            data,
            task,
            cfg.ckpt_path,
            pooling=checked.model.pooling,
            head=checked.model.head,
            **({"bn": checked.model.bn} if checked.model.bn else {}),
        )
    )
    module = SortedNetModule(
        nested,
        task,
        checked.make_sampler(nested.space),
        optim=checked.optim,
        accumulate=checked.train.accumulate,
        grad_clip=checked.train.grad_clip,
        distill=checked.train.distill,
        val_subnets=list(cfg.val.subnets) if cfg.val.subnets else None,
        subnet_weights=checked.train.subnet_weights,
        seed=cfg.seed,
        max_nonfinite_steps=checked.train.max_nonfinite_steps,
        compile=checked.train.compile,
    )
    return data, module


def stitched_for_training(checked: Checked, data: Any, task: Any, seed: int, resuming: bool) -> Any:
    """The stitched model of the `stitch` section; its space must be the one the config was checked against."""
    stitched = checked.stitching.build(data, task, seed, resuming)  # type: ignore[union-attr]
    if stitched.space.to_dict() != checked.space.to_dict():
        raise ValueError(
            f"stitch: with the data's labels and image size the anchors order as {stitched.space.to_dict()}, "
            f"not as checked ({checked.space.to_dict()}); give anchors of clearly different sizes"
        )
    return stitched


def make_trainer(cfg: DictConfig, run_dir: Path) -> L.Trainer:
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.loggers import WandbLogger

    from ..train.checkpoint_io import AtomicCheckpointIO
    from ..train.maestro import MaestroCallback

    run_config = container(cfg)
    runtime = {"checkpoint": {"run_config": run_config, "dirpath": str(run_dir / "checkpoints")}}
    # _recursive_=False: the run config given to the checkpoint holds _target_ nodes that must stay data
    callbacks = [
        make(entry, _recursive_=False, **runtime.get(name, {}))
        for name, entry in callback_configs(cfg).items()
    ]
    if "rank" in cfg.nesting:
        callbacks.append(MaestroCallback(**container(cfg.train.rank), seed=cfg.seed))
    logger = make(cfg.logger) if (cfg.get("logger") or {}).get("_target_") else False
    if isinstance(logger, WandbLogger):
        logger.log_hyperparams(run_config)
    show = cfg.trainer.get("enable_progress_bar", True) and any(isinstance(c, ProgressBar) for c in callbacks)
    if not show:  # trainer.enable_progress_bar=false wins over a configured bar (Lightning refuses both)
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return make(cfg.trainer)(
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=show,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


def finish(cfg: DictConfig, trainer: L.Trainer, data, module, run_dir: Path) -> list[dict[str, Any]]:
    """Commit the final checkpoint pair, then (rank 0) evaluate every subnet, print the table and add it to
    the one-file checkpoint's header (a header rewrite: the pair stays of one step)."""
    from ..api import load
    from ..bn_calibration import DEFAULT_BATCHES, calibrate_subnets, needs_calibration, with_uncalibrated
    from ..checkpoint import run_metadata, update_metadata
    from ..evaluate import evaluate_subnets
    from ..importance import influence_line
    from ..importance import influence_record as block_influence
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
        if needs_calibration(nested):  # BatchNorm: each subnet's statistics from training batches (US-Nets)
            n = int(cfg.eval_table.get("calibration_batches", DEFAULT_BATCHES))
            uncalibrated = rows
            calibrate_subnets(nested, subnets, data.train_dataloader(), n)
            batches = itertools.islice(data.val_dataloader(), cfg.eval_table.max_batches)
            rows = with_uncalibrated(evaluate_subnets(nested, batches, module.task, subnets), uncalibrated)
            nested.save(one_file_path(last), metadata=run_metadata(one_file_path(last)))
        write_table(rows, run_dir)
        print_table(
            rows, title=f"{cfg.name}: every sub-model on the validation set", metric=module.task.metric
        )
        influence = block_influence(
            nested, itertools.islice(data.val_dataloader(), cfg.eval_table.max_batches), "validation"
        )
        print(influence_line(influence))
        update_metadata(one_file_path(last), eval_table=rows, block_influence=influence)
    log_final(trainer, rows, run_dir, one_file_path(last), {"global_step": trainer.global_step})
    print(f"run folder: {run_dir}\n  {last}\n  {one_file_path(last)}")
    return rows


def _data_metadata(data: Any) -> dict[str, Any]:
    from ..train.callbacks import data_metadata

    return data_metadata(data)


# ---- the edge: user errors become one line ------------------------------------------------------------
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError)


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


def check_overrides(argv: list[str]) -> None:
    """Compose the config once before Hydra's app does: a misspelt group, key or override grammar is refused in
    one line with exit code 2 (Hydra itself prints several lines and exits with 1)."""
    if any(a.startswith("-") for a in argv):  # --cfg, --help, -m ...: Hydra's own flags
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            compose("train", overrides=argv, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        text = str(err).split("\nConfig search path")[0].split("\nSee https://hydra.cc")[0]
        text = text.replace(":\n\t", ": ").replace("\n\t", ", ")
        print(f"sortednet-train: error: {' '.join(text.split())}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """`sortednet-train`: Hydra's command line, plus --list, --copy NAME FILE.yaml and --config FILE.yaml."""
    argv = handle(sys.argv[1:])
    if argv is not None:
        check_overrides(argv)
        sys.argv = [sys.argv[0], *argv]
        hydra_main()


if __name__ == "__main__":
    main()
