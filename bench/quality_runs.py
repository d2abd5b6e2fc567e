"""Training runs of bench.quality: `sortednet-train`'s own `run(cfg)` in this process, a probe callback for
the validation set's size, and a cache keyed by what decides a run's result.

Cache key: the resolved config (run_dir left out), the code (HEAD plus a hash of the uncommitted changes and
untracked files under sortednet/), the library versions and torch's thread count. A cached run keeps the wall
time it was measured with; the report lists it as cached and never adds it to the measured time.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from .quality_stats import Curve, read_curves

VERSIONED = ("torch", "transformers", "lightning", "datasets", "scikit-learn", "numpy")


class Probe(L.Callback):
    """After the last step (before the eval table) on the eval table's validation batches: the labelled
    examples (classification) and, with `batch_losses`, each validation subnet's mean loss per batch and the
    targets it was over (a language model's predicted tokens)."""

    runs: ClassVar[list[Probe]] = []  # made by sortednet-train from the config; the newest is last

    def __init__(self, max_batches: int | None = None, batch_losses: bool = False) -> None:
        self.max_batches, self.batch_losses = max_batches, batch_losses
        self.count = 0
        self.losses: dict[str, list[float]] = {}
        Probe.runs.append(self)

    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        was_training = module.nested.training
        module.nested.eval()
        for batch in itertools.islice(trainer.datamodule.val_dataloader(), self.max_batches):
            labels = batch["labels"].to(module.device)
            if not self.batch_losses:
                self.count += int(labels.shape[0]) if labels.dim() == 1 else 0
                continue
            inputs = {k: v.to(module.device) for k, v in batch.items() if k != "labels"}
            for i, subnet in enumerate(module.val_subnets):
                with module.nested.use(subnet):
                    loss, _, count = module.task.stats(module.nested(**inputs).logits, labels).tolist()
                self.losses.setdefault(str(subnet), []).append(loss / count)
                self.count += int(count) if i == 0 else 0
        module.nested.train(was_training)


@dataclass
class Trained:
    rows: list[dict[str, Any]]
    wall_s: float
    val_count: int = (
        0  # labelled validation targets the eval table read (0 for a language model's nested run)
    )
    batch_losses: dict[str, list[float]] = field(default_factory=dict)
    curves: dict[str, Curve] = field(default_factory=dict)
    cached: bool = False

    def row(self, subnet: str) -> dict[str, Any]:
        return next(r for r in self.rows if r["subnet"] == subnet)


# ---- the cache key ----------------------------------------------------------------------------------------
def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The config, every interpolation resolved (data.seed: ${seed} becomes the seed), run_dir left out."""
    cfg = copy_of(cfg)
    cfg.run_dir = "RUN_DIR"
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("run_dir")
    return data


def code_state(repo: Path) -> str:
    """The committed tree of sortednet/ (not HEAD: a commit of docs or benchmarks keeps the cache), plus a hash
    of `git diff HEAD -- sortednet` and of the untracked files under sortednet/."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout

    head = git("rev-parse", "HEAD:sortednet").strip()
    digest = hashlib.sha256(git("diff", "HEAD", "--", "sortednet").encode())
    for path in sorted(git("ls-files", "--others", "--exclude-standard", "--", "sortednet").split()):
        digest.update(path.encode() + (repo / path).read_bytes())
    return f"{head}+{digest.hexdigest()[:12]}"


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return {**found, "torch_threads": str(torch.get_num_threads())}


def cache_key(resolved: dict[str, Any], code: str, libraries: dict[str, str]) -> str:
    text = json.dumps({"config": resolved, "code": code, "versions": libraries}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# ---- running ----------------------------------------------------------------------------------------------
def copy_of(cfg: DictConfig) -> DictConfig:
    import copy

    out = copy.deepcopy(cfg)
    OmegaConf.set_struct(out, False)
    return out


def train(cfg: DictConfig, folder: Path, log: Path, metric: str) -> Trained:
    """Train with sortednet-train's own code path in this process; stdout and stderr go to `log`."""
    from sortednet.cli.train import run

    folder.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=folder))
    cfg = copy_of(cfg)
    cfg.run_dir = str(run_dir)
    start = time.perf_counter()
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                rows = run(cfg)
            except (
                SystemExit
            ) as exit:  # sortednet-train's refusals and divergence exit with a one-line reason
                raise RuntimeError(f"{log.name}: {buffer.getvalue().strip().splitlines()[-1:]}") from exit
        wall = time.perf_counter() - start
        probe = Probe.runs[-1] if Probe.runs else Probe()  # a run without a probe: nothing counted
        curves = {}
        if cfg.val.subnets and cfg.get("logger", {}).get("_target_"):
            (csv_file,) = glob.glob(str(run_dir / "**" / "metrics.csv"), recursive=True)
            curves = read_curves(Path(csv_file).read_text(), metric, list(cfg.val.subnets))
    finally:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(buffer.getvalue())
        shutil.rmtree(run_dir, ignore_errors=True)
        Probe.runs.clear()
    return Trained(rows, wall, probe.count, probe.losses, curves)


@dataclass
class Runner:
    """Trains, or reads a run of the same key from `folder`/cache (unless `use_cache` is off)."""

    folder: Path
    code: str
    use_cache: bool = True

    def __post_init__(self) -> None:
        self.libraries = versions()

    def get(self, cfg: DictConfig, label: str, metric: str) -> Trained:
        key = cache_key(resolved_config(cfg), self.code, self.libraries)
        path = self.folder / "cache" / f"{label}-{key}.json"
        if self.use_cache and path.is_file():
            data = json.loads(path.read_text())
            data["curves"] = {s: [tuple(p) for p in c] for s, c in data["curves"].items()}
            return Trained(**{**data, "cached": True})
        result = train(cfg, self.folder, self.folder / "logs" / f"{label}-{key}.log", metric)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(result)))
        return result


@dataclass
class Plan:
    case: Any  # bench.quality_cases.Case
    overrides: list[str]  # the mode's (quick or full) and --set
    nested: DictConfig  # the recipe with `overrides` and --nested-set
    shapes: list[str]
    params: dict[str, int]
    space_size: int
    seeds: list[int]
    steps: int  # each twin's optimizer steps, and the nested run's at equal steps
    nested_steps: int  # column (a): `steps` unless --nested-steps
    compute_steps: int | None  # column (b); None: --no-equal-compute
    k: int  # subnets (forward/backward passes) per nested batch
    accumulate: int
    teacher_steps: int  # a `train.distill.teacher=finetune` phase before the nested steps (0: none)
    every: int  # batches between the nested runs' validations
    seeds_note: str
    sizing: Trained  # the one-step run that gave every sub-model's parameter count
