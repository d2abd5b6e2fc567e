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
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from ..train.config import RunConfig, check, make
from ..train.console import log_to, phase, record, say, stop_logging
from ..train.models import offline_model_path
from .recipes import CONF_DIR, handle
from .run_folder import check_run_dir, remove_if_empty

OmegaConf.register_new_resolver("offline_model", offline_model_path, replace=True)


def build(run: RunConfig, run_dir: Path) -> tuple[Any, Any]:
    """Data module, many-in-one model and Lightning module, as the checked config says."""
    from ..api import nest
    from ..data.loader import first_batches
    from ..report import human
    from ..train import SortedNetModule, task_for
    from ..train.costs import measure_costs
    from ..train.teacher import build_teacher, frozen_teacher

    L.seed_everything(run.seed, workers=True, verbose=False)
    data = make(run.nodes["data"])
    data.prepare_data()
    data.setup("fit")
    data.train_dataloader()  # its checks (a batch larger than the data) before anything trains
    task = task_for(data.task)
    teacher = None
    distill = run.train.distill
    if run.stitching is not None:
        nested = run.stitching.build(data, task, run.seed, bool(run.ckpt_path))
        if distill.enabled and distill.teacher is not None:
            anchor_class = next(iter(run.stitching.anchors.values())).class_name
            teacher = frozen_teacher(distill, distill.teacher_class or anchor_class, data)
        if nested.space.to_dict() != run.space.to_dict():
            raise ValueError(
                f"stitch: with the data's labels and image size the anchors order as {nested.space.to_dict()}, "
                f"not as checked ({run.space.to_dict()}); give anchors of clearly different sizes"
            )
    else:
        spec, order, resumed = run.model, run.reorder, run.resumed
        method = None if "permutation" in resumed else order.method  # a resume's weights are ordered already
        ranking = (resumed.get("depth_order") or {}).get("ranking")
        measures = method not in (None, "magnitude") or (
            getattr(run.space, "depth_order", None) == "influence" and ranking is None
        )
        batches = first_batches(data, order.batches) if measures else []
        model = spec.build(data.model_kwargs())
        if distill.enabled and distill.teacher is not None:
            teacher = build_teacher(
                distill,
                spec,
                model,
                run.space,
                data,
                task,
                run.seed,
                run.optim.lr,
                run_dir,
                bool(run.ckpt_path),
            )
        start = time.perf_counter()
        nested = nest(
            model,
            run.space,
            pooling=spec.pooling,
            head=spec.head,
            bn=spec.bn,
            order=method,
            batches=batches,
            loss=task.model_loss,
            ranking=ranking,
        )
        if "permutation" in resumed:
            nested.metadata["permutation"] = resumed["permutation"]
        elif method is not None:
            say(
                f"nesting.reorder={method}: {', '.join(nested.metadata['permutation']['dims'])} ordered by "
                f"importance on {len(batches)} training batches in {time.perf_counter() - start:.1f} s"
            )
        if getattr(run.space, "depth_order", None) not in (None, "prefix"):
            say(f"nesting.depth_order={run.space.depth_order}: layers by importance {list(nested.ranking)}")
    for key, old, new in run.resume_changes:
        say(f"resume: {key}={new!r} applied (the checkpoint's {old!r})")
    costs = nested.space.costs()
    say(
        f"{run.name}: {len(nested.space)} sub-models in one model of {human(costs[-1])} parameters "
        f"(the smallest {human(costs[0])})"
    )
    sampler = run.sampler.bind(nested.space)
    measure_costs(nested, sampler, data)  # sampler.cost=flops|latency: the costs it groups by
    module = SortedNetModule(
        nested,
        task,
        sampler,
        optim=run.optim,
        train=run.train,
        val_subnets=run.val_subnets,
        seed=run.seed,
        teacher=teacher,
    )
    return data, module


def make_trainer(run: RunConfig, run_dir: Path) -> L.Trainer:
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.loggers import WandbLogger

    from ..train.checkpoint_io import AtomicCheckpointIO

    runtime = {"checkpoint": {"run_config": run.resolved, "dirpath": str(run_dir / "checkpoints")}}
    # _recursive_=False: the run config given to the checkpoint holds _target_ nodes that must stay data
    callbacks = [
        make(entry, _recursive_=False, **runtime.get(name, {})) for name, entry in run.callbacks.items()
    ]
    if run.maestro is not None:
        callbacks.append(run.maestro)
    logger_node = run.nodes["logger"]
    logger = make(logger_node) if (logger_node or {}).get("_target_") else False
    if isinstance(logger, WandbLogger):
        logger.log_hyperparams(run.resolved)
    trainer_node = run.nodes["trainer"]
    show = trainer_node.get("enable_progress_bar", True) and any(
        isinstance(c, ProgressBar) for c in callbacks
    )
    if not show:  # trainer.enable_progress_bar=false wins over a configured bar (Lightning refuses both)
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return make(trainer_node)(
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=show,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


def finish(run: RunConfig, trainer: L.Trainer, data, module, run_dir: Path) -> list[dict[str, Any]]:
    """Commit the final checkpoint pair, then (rank 0) evaluate every subnet, print the table and add it to
    the one-file checkpoint's header (a header rewrite: the pair stays of one step)."""
    from ..api import load
    from ..bn_calibration import calibrate_subnets, needs_calibration, with_uncalibrated
    from ..checkpoint import run_metadata, update_metadata
    from ..evaluate import evaluate_subnets
    from ..importance import influence_line
    from ..importance import influence_record as block_influence
    from ..report import print_table, write_table
    from ..train.callbacks import data_metadata
    from ..train.checkpoint_io import one_file_path, save_pair
    from ..train.eval_callback import log_final
    from ..train.fsdp import is_sharded_model

    last = run_dir / "checkpoints" / "last.ckpt"
    metadata = {"train_config": run.resolved, "global_step": trainer.global_step, **data_metadata(data)}
    save_pair(trainer, last, metadata)
    if not trainer.is_global_zero:
        return []
    nested = module.nested
    if is_sharded_model(nested):  # FSDP: rank 0 evaluates the gathered model of the file
        nested = load(one_file_path(last)).to(module.device)
    rows: list[dict[str, Any]] = []
    table = run.eval_table
    if table.enabled:
        subnets = table_members(nested, table.max_subnets, module.val_subnets)
        batches = itertools.islice(data.val_dataloader(), table.max_batches)
        with phase(f"evaluating {len(subnets)} sub-models on the validation set"):
            rows = evaluate_subnets(nested, batches, module.task, subnets)
        if needs_calibration(nested):  # BatchNorm: each subnet's statistics from training batches (US-Nets)
            uncalibrated = rows
            what = f"calibrating BatchNorm on {table.calibration_batches} training batches per sub-model"
            with phase(what, len(subnets), "sub-models") as advance:
                calibrate_subnets(
                    nested, subnets, data.train_dataloader(), table.calibration_batches, progress=advance
                )
            batches = itertools.islice(data.val_dataloader(), table.max_batches)
            rows = with_uncalibrated(evaluate_subnets(nested, batches, module.task, subnets), uncalibrated)
            nested.save(one_file_path(last), metadata=run_metadata(one_file_path(last)))
        write_table(rows, run_dir)
        every = len(subnets) == len(nested.space)
        title = f"{run.name}: " + (
            "every sub-model on the validation set"
            if every
            else f"{len(subnets)} of the {len(nested.space)} sub-models (a cost-stratified sample and the validated ones)"
        )
        print_table(rows, title=title, metric=module.task.metric)
        record(f"{title}\n{(run_dir / 'table.md').read_text()}")
        influence = block_influence(
            nested, itertools.islice(data.val_dataloader(), table.max_batches), "validation"
        )
        say(influence_line(influence))
        update_metadata(one_file_path(last), eval_table=rows, block_influence=influence)
    log_final(trainer, rows, run_dir, one_file_path(last), {"global_step": trainer.global_step})
    say(f"run folder: {run_dir}\n  {last}\n  {one_file_path(last)}")
    return rows


def table_members(nested: Any, n: int, validated: list[Any]) -> list[Any]:
    """What the end-of-training table evaluates: every member, or in a larger space a cost-stratified sample of
    `n` (smallest and largest in) and the members validated during training, cheapest first."""
    from ..measure import stratified_subnets

    sample = stratified_subnets(nested.space, n) if n else []
    return sorted(dict.fromkeys([*sample, *validated]), key=nested.num_params)


# ---- the edge: user errors become one line ------------------------------------------------------------
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError, ImportError)


def _user_error_types() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import OmegaConfBaseException

    return (*USER_ERRORS, HydraException, MisconfigurationException, OmegaConfBaseException)


def one_line(err: BaseException) -> str:
    wrappers = ("InstantiationException", "InterpolationResolutionError")
    while type(err).__name__ in wrappers and (err.__cause__ or err.__context__) is not None:
        err = (
            err.__cause__ or err.__context__
        )  # hydra wraps a data module's or model's error, omegaconf a resolver's
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
            remove_if_empty(run_dir)
        print(f"sortednet-train: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


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
    from ..atomic import DiskFull
    from ..train.checkpoint_io import recover
    from ..train.module import Diverged
    from ..train.run_lock import RunLock, is_launching_process

    run_dir = Path(cfg.run_dir)
    made_by_us = not run_dir.exists() or not any(
        p.suffix != ".log" for p in run_dir.iterdir()
    )  # Hydra makes the folder (and its log) just before this runs
    with refusing(run_dir, made_by_us):
        checked = check(cfg)
    lock = RunLock(run_dir)
    launching = is_launching_process()
    log = None
    if launching:
        with refusing(run_dir, made_by_us=False):  # the folder is another run's: touch nothing
            lock.acquire()
        write_run_config(cfg, run_dir)
        log = log_to(run_dir / "train.log")
        for line in recover(run_dir / "checkpoints"):
            print(f"sortednet-train: {line} (left by a run that was killed)", file=sys.stderr)
    try:
        with refusing(run_dir, made_by_us):
            data, module = build(checked, run_dir)
            trainer = make_trainer(checked, run_dir)
        try:
            trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)
            return finish(checked, trainer, data, module, run_dir)
        except Diverged as err:
            print(f"sortednet-train: {' '.join(str(err).split())}", file=sys.stderr)
            sys.exit(1)
        except DiskFull as err:
            last = run_dir / "checkpoints" / "last.ckpt"
            kept = (
                f"the last committed pair {str(last)!r} is intact" if last.is_file() else "no pair was saved"
            )
            print(
                f"sortednet-train: error: {err}; {kept}; free space, then resume with ckpt_path={last}",
                file=sys.stderr,
            )
            sys.exit(1)
    finally:
        if log is not None:
            stop_logging(log)
        lock.release()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    run(cfg)


def compose_config(argv: list[str]) -> DictConfig:
    """The config Hydra's app would run, composed here: a misspelt group, key or override grammar is refused in
    one line with exit code 2 (Hydra itself prints several lines and exits with 1)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=argv, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        text = str(err).split("\nConfig search path")[0].split("\nSee https://hydra.cc")[0]
        text = text.replace(":\n\t", ": ").replace("\n\t", ", ")
        print(f"sortednet-train: error: {' '.join(text.split())}", file=sys.stderr)
        sys.exit(2)


def check_only(argv: list[str]) -> None:
    """`sortednet-train --check [overrides]`: the config checked as a run would check it, nothing built or
    written; a summary and exit 0, or one line and exit 2."""
    from rich.console import Console
    from rich.table import Table

    cfg = compose_config(argv)
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = "(not made: --check)"
    cfg.pop("hydra")
    try:
        run = check(cfg)
    except _user_error_types() as err:
        print(f"sortednet-train: error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in run.summary():
        grid.add_row(key, value)
    Console(width=max(Console().width, 120)).print(grid)
    print("config OK: nothing was built or written")


def main() -> None:
    """`sortednet-train`: Hydra's command line, plus --check, --list, --copy NAME FILE.yaml, --config FILE.yaml."""
    argv = handle(sys.argv[1:])
    if argv is None:
        return
    if argv and argv[0] == "--check":
        check_only(argv[1:])
        return
    if not any(a.startswith("-") for a in argv):  # --cfg, --help, -m ...: Hydra's own flags
        check_run_dir(compose_config(argv))
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


if __name__ == "__main__":
    main()
