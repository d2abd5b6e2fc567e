"""sortednet-eval: the Hydra application that evaluates every sub-model of a one-file checkpoint.

    sortednet-eval ckpt=runs/digits_vit/<time>                 # a run folder or a .safetensors file
    sortednet-eval ckpt=run.safetensors device=cuda latency.batch_size=32 subnets=16

For each subnet: exact parameters, FLOPs per sample (torch.utils.flop_counter), latency on the current device
(median after warm-up) and the task metrics on the validation set of the run's own data config (or another).
Writes table.csv, table.md and pareto.png into out_dir and stores the table in the checkpoint's metadata.
"""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .recipes import CONF_DIR
from .run_data import build_data

PROG = "sortednet-eval"


def eval_dir(ckpt: str | None) -> str:
    """Default output folder: <run folder>/eval for a run folder or its checkpoints/*.safetensors."""
    if not ckpt:
        return f"runs/eval/{datetime.now():%Y-%m-%d_%H-%M-%S}"
    path = Path(ckpt)
    if path.is_dir():
        return str(path / "eval")
    if path.parent.name == "checkpoints":
        return str(path.parent.parent / "eval")
    return str(path.with_name(path.stem + "_eval"))


OmegaConf.register_new_resolver("eval_dir", eval_dir, replace=True)


class Batches:
    """The validation loader, re-iterable, limited to `max_batches` per pass."""

    def __init__(self, loader: Any, max_batches: int | None) -> None:
        self.loader, self.max_batches = loader, max_batches

    def __iter__(self):
        return iter(itertools.islice(self.loader, self.max_batches))


def pick_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"device={name!r} is not usable here: {' '.join(str(err).split())}") from None
    return device


def device_name(device: Any) -> str:
    """'NVIDIA H100 80GB HBM3', or the CPU's model name and core count."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def settings_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation settings of a (possibly partial) eval config, defaults filled in."""
    defaults = OmegaConf.load(CONF_DIR / "eval.yaml")
    merged = OmegaConf.merge(
        {k: v for k, v in defaults.items() if k not in ("defaults", "hydra", "out_dir")}, dict(cfg)
    )
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def evaluate_checkpoint(
    path: str | Path,
    cfg: Mapping[str, Any] | None = None,
    data_cfg: Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    console: Any = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate the subnets of a checkpoint as `cfg` (eval.yaml's keys) says. Everything that can be refused
    is checked before anything is written. Returns (rows, info); with out_dir, writes the table and plot
    there; with write_checkpoint, stores both in the checkpoint's metadata."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    import sortednet as sn

    from ..checkpoint import resolve, update_metadata
    from ..evaluate import evaluate, headline_metric
    from ..importance import influence_record as influence
    from ..measure import pick_subnets
    from ..report import plot_pareto, write_table
    from ..tasks import task_for
    from .bn_calibration import calibrate_missing, store

    s = settings_of(cfg or {})
    console = console or Console(stderr=True)
    lat = s["latency"]
    for key in ("batch_size", "repeats", "threads"):
        if lat.get(key) is not None and int(lat[key]) < 1:
            raise ValueError(f"latency.{key}={lat[key]} is below 1; allowed: an int >= 1")
    device = pick_device(str(s["device"]))
    path = resolve(path)
    meta = sn.read_metadata(path)
    nested = sn.load(path)
    subnets = pick_subnets(nested.space, s["subnets"], int(s["max_subnets"]), int(s["seed"]))
    searched = [
        nested.space.normalize(x["subnet"]) for x in meta.get("slices") or []
    ]  # sortednet-search's front
    sampled = len(subnets) < len(nested.space)
    subnets = [*subnets, *(m for m in searched if m not in subnets)]
    if sampled or searched:
        what = (
            f"a cost-stratified sample of {len(subnets) - len(searched)} of the {len(nested.space)} members"
        )
        console.print(f"{PROG}: {what if sampled else 'every member'}" + (
            f" and the {len(searched)} searched slices" if searched else ""))  # fmt: skip
    data, data_cfg = build_data(meta, data_cfg, s["eval_batch_size"], fallback=s)
    task = task_for(data.task)
    nested.to(device)
    calibrated = calibrate_missing(nested, subnets, meta, int(s.get("calibration_batches") or 20), data)
    batches = Batches(data.val_dataloader(), s["max_batches"])
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not s["progress"], transient=False) as bar:
        job = bar.add_task(f"evaluating {len(subnets)} subnets on {device.type}", total=len(subnets))
        timing = bar.add_task("timing them, interleaved rounds", total=int(lat["repeats"]), visible=False)

        def timed(round_: int) -> None:
            bar.update(timing, visible=True, advance=1)

        rows = evaluate(
            nested,
            batches,
            task,
            subnets,
            flops=bool(s["flops"]),
            latency=bool(lat["enabled"]),
            latency_batch_size=int(lat["batch_size"]),
            warmup=int(lat["warmup"]),
            repeats=int(lat["repeats"]),
            latency_threads=lat.get("threads"),
            progress=lambda sub: bar.advance(job),
            latency_progress=timed,
        )
    seconds = time.perf_counter() - start
    metric, higher = headline_metric(rows, s["metric"])
    info = {
        "subnets": len(rows),
        "space_size": len(nested.space),
        "sampled": sampled,
        "searched": len(searched),
        "seconds": round(seconds, 3),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "latency_batch_size": int(lat["batch_size"]) if lat["enabled"] else None,
        "latency_repeats": int(lat["repeats"]),
        "latency_threads": lat.get("threads") or (torch.get_num_threads() if device.type == "cpu" else None),
        "flops": "per sample: one forward pass of the first validation example (torch.utils.flop_counter)",
        "data": data_cfg,
        "max_batches": s["max_batches"],
        "metric": metric,
        "higher_is_better": higher,
        "time": datetime.now().isoformat(timespec="seconds"),
    }
    info["latency_unreliable"] = busy_latencies(rows)
    info["title"] = _title(meta, info)
    if out_dir is not None:
        costs = [c for c in ("params", "latency_ms") if c in rows[0]]
        write_table(rows, out_dir)
        plot_pareto(rows, Path(out_dir) / "pareto.png", metric, higher, costs, title=info["title"])
    info["block_influence"] = influence(nested, batches, "validation")
    if s["write_checkpoint"]:
        nested.to("cpu")
        own = {k: v for k, v in info.items() if k != "block_influence"}
        if calibrated:  # new BatchNorm statistics: tensors, so the file is rewritten, not only its header
            store(nested, path, eval_table=rows, eval_info=own, block_influence=info["block_influence"])
        else:
            update_metadata(path, eval_table=rows, eval_info=own, block_influence=info["block_influence"])
    return rows, info


def busy_latencies(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The subnets whose latency was measured while the machine was too busy to trust it (`latency_ok`)."""
    return [str(r["subnet"]) for r in rows if r.get("latency_ok") is False]


def busy_line(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """One line saying which latencies are not to be trusted, or None."""
    from ..measure import MAX_SPREAD, MIN_CPU_SHARE

    busy = busy_latencies(rows)
    if not busy:
        return None
    shown = ", ".join(busy[:3]) + (" ..." if len(busy) > 3 else "")
    return (
        f"latency: {len(busy)} of {len(rows)} subnets were timed while the machine was busy (the process got "
        f"under {MIN_CPU_SHARE:.0%} of a core, or its repeats spread over {MAX_SPREAD}x the median): "
        f"{shown}; their latency_ms (latency_ok=BUSY) is not reliable: measure again on an idle machine"
    )


def _title(meta: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    name = (meta.get("train_config") or {}).get("name") or meta.get("model_class", "")
    where = f"{info['device']} ({info['device_name']})"
    if info.get("latency_batch_size"):
        n = info.get("latency_threads")
        threads = f", {n} thread{'s' if n != 1 else ''}" if n else ""
        where += f", latency at batch {info['latency_batch_size']}{threads}"
    return f"{name}: {info['subnets']} sub-models on {where}"


def _refuse(err: BaseException, out_dir: Path, existed: bool) -> None:
    """A user error: one line, exit code 2, and no output folder left behind (Hydra made it before we ran)."""
    if out_dir.exists() and not existed:
        leftovers = [p for p in out_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
        if not leftovers:
            shutil.rmtree(out_dir)
    print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
    sys.exit(2)


def run(cfg: DictConfig) -> list[dict[str, Any]]:
    out_dir = Path(cfg.out_dir)
    existed = any(p.name not in (".hydra",) and p.suffix != ".log" for p in out_dir.glob("*"))
    try:
        if not cfg.ckpt:
            raise ValueError("ckpt is required: sortednet-eval ckpt=<run folder or .safetensors file>")
        data_cfg = OmegaConf.to_container(cfg.data, resolve=False) if cfg.get("data") else None
        own = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "data"])  # data resolves against the run's
        settings = OmegaConf.to_container(own, resolve=True)
        rows, info = evaluate_checkpoint(cfg.ckpt, settings, data_cfg, out_dir)
    except (ValueError, FileNotFoundError) as err:
        _refuse(err, out_dir, existed)
    except OmegaConfBaseException as err:
        _refuse(ValueError(str(err).splitlines()[0]), out_dir, existed)
    from ..importance import influence_line
    from ..report import pareto_front, print_table

    front = [
        str(rows[i]["subnet"]) for i in pareto_front(rows, "params", info["metric"], info["higher_is_better"])
    ]
    print_table(rows, title=info["title"], metric=info["metric"], highlight=front)
    print(f"green: the Pareto frontier of {info['metric']} against params ({len(front)} of {len(rows)})")
    print(influence_line(info["block_influence"]))
    busy = busy_line(rows)
    if busy:
        print(busy)
    per = info["seconds"] / max(len(rows), 1)
    print(f"{len(rows)} subnets in {info['seconds']:.1f} s ({per:.2f} s per subnet) on {info['device_name']}")
    print(
        f"wrote {out_dir}/table.csv, table.md, pareto.png"
        + ("; table stored in the checkpoint" if cfg.write_checkpoint else "")
    )
    return rows


@hydra.main(config_path=str(CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
