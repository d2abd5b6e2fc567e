"""The training options, each value checked here and nowhere else (one-line errors naming the key, the value
and what is allowed). The CLI builds these before anything else, so a bad value is refused before any data or
model is loaded; SortedNetModule takes them as they are."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from ..checks import number
from ..optim import UPDATES
from .compiled import compile_backend

SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class Optim:
    """AdamW with warmup and a cosine/linear/constant schedule (`optim.*`); `update`: `all` moves every tensor
    with a gradient as a whole (torch's AdamW), `touched` only the rows/columns some subnet of the step used."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    update: str = "all"
    head_lr: float | None = None  # the task head (parameters outside model.base_model); None: lr

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.update not in UPDATES:
            raise ValueError(f"optim.update={self.update!r} is unknown; allowed: {', '.join(UPDATES)}")
        set_(self, "lr", number("optim.lr", self.lr, low=0, low_open=True))
        set_(self, "weight_decay", number("optim.weight_decay", self.weight_decay, low=0))
        set_(self, "eps", number("optim.eps", self.eps, low=0, low_open=True))
        betas = (
            list(self.betas) if isinstance(self.betas, Sequence) and not isinstance(self.betas, str) else None
        )
        if betas is None or len(betas) != 2:
            raise ValueError(f"optim.betas={self.betas!r} is not allowed; allowed: two numbers in [0, 1)")
        set_(self, "betas", tuple(number("optim.betas", b, low=0, high=1, high_open=True) for b in betas))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule={self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
        set_(self, "warmup_steps", number("optim.warmup_steps", self.warmup_steps, int, low=0))
        set_(self, "min_lr_ratio", number("optim.min_lr_ratio", self.min_lr_ratio, low=0, high=1))
        if self.head_lr is not None:
            set_(self, "head_lr", number("optim.head_lr", self.head_lr, low=0, low_open=True))


TEACHER_PHASE = "finetune"  # train.distill.teacher: fine-tune the full model alone first, then nest


@dataclass(frozen=True)
class Distill:
    """Distillation (`train.distill.*`): from the largest subnet of each step (in place, `teacher: null`), or from
    a frozen teacher: a fine-tuned model of the same class (a folder or a Hub id), a model of the transformers class
    `teacher_class` (DeiT's RegNetY-16GF: `RegNetForImageClassification`), or `finetune`: the full model
    fine-tuned alone for `teacher_steps` first (the nested model then starts from it). `hard`: the teacher's argmax
    as the target (DeiT's hard distillation) instead of its softened distribution. `hidden`: weight of the
    hidden-state term at matching depths (a teacher of the run's class; sortednet.train.distill)."""

    enabled: bool = False
    temperature: float = 1.0
    alpha: float = 0.5
    teacher: str | None = None
    teacher_steps: int = 0
    teacher_lr: float | None = None  # the teacher phase's learning rate; null: optim.lr
    hidden: float = 0.0
    hard: bool = False
    teacher_class: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for key in ("enabled", "hard"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(
                    f"train.distill.{key}={getattr(self, key)!r} is not allowed; allowed: true or false"
                )
        set_(self, "temperature", number("train.distill.temperature", self.temperature, low=0, low_open=True))
        set_(self, "alpha", number("train.distill.alpha", self.alpha, low=0, high=1))
        set_(self, "teacher_steps", number("train.distill.teacher_steps", self.teacher_steps, int, low=0))
        set_(self, "hidden", number("train.distill.hidden", self.hidden, low=0))
        if self.teacher_lr is not None:
            set_(
                self, "teacher_lr", number("train.distill.teacher_lr", self.teacher_lr, low=0, low_open=True)
            )
        teacher = self.teacher
        if teacher is not None and (not isinstance(teacher, str) or not teacher.strip()):
            raise ValueError(
                f"train.distill.teacher={teacher!r} is not allowed; allowed: null (in place), {TEACHER_PHASE} or "
                "a fine-tuned model's folder or Hub id"
            )
        if (teacher == TEACHER_PHASE) != (self.teacher_steps > 0):
            raise ValueError(
                f"train.distill.teacher={teacher} with train.distill.teacher_steps={self.teacher_steps}: the "
                f"teacher phase needs steps; allowed: teacher={TEACHER_PHASE} with teacher_steps >= 1, or "
                "teacher_steps=0 otherwise"
            )
        if (
            teacher
            and teacher.startswith(("/", "./", "../", "~"))
            and not Path(teacher).expanduser().exists()
        ):
            raise ValueError(
                f"train.distill.teacher={teacher!r} does not exist; give a folder with config.json or a Hub name"
            )
        if self.hidden and teacher is None:
            raise ValueError(
                f"train.distill.hidden={self.hidden} needs a teacher model (train.distill.teacher); in-place "
                "distillation matches logits only"
            )
        if self.teacher_class is not None:
            self._check_teacher_class()

    def _check_teacher_class(self) -> None:
        import transformers

        name = self.teacher_class
        if not hasattr(getattr(transformers, str(name), None), "from_pretrained"):
            raise ValueError(f"train.distill.teacher_class={name!r} is not a transformers model class")
        if self.teacher in (None, TEACHER_PHASE):
            raise ValueError(
                f"train.distill.teacher_class={name} with train.distill.teacher={self.teacher}; allowed: a teacher "
                "folder or Hub id to load that class from"
            )
        if self.hidden:
            raise ValueError(
                f"train.distill.hidden={self.hidden} with train.distill.teacher_class={name}: a teacher of another "
                "class has no matching layers; allowed: hidden=0"
            )


def check_distill_stitched(distill: Distill) -> None:
    """A stitched run distils from a frozen teacher read from a folder or the Hub (its anchors are its models)."""
    if not distill.enabled or distill.teacher is None:
        return
    if distill.teacher == TEACHER_PHASE:
        raise ValueError(
            f"train.distill.teacher={TEACHER_PHASE} fine-tunes the run's model; a stitched run has anchors: allowed: "
            "a teacher folder or Hub id (with train.distill.teacher_class for another class), or null"
        )
    if distill.hidden:
        raise ValueError(
            f"train.distill.hidden={distill.hidden} matches a nested model's kept layers; a stitch has none: "
            "allowed with stitch: hidden=0"
        )


@dataclass(frozen=True)
class Train:
    """How each optimizer step is made (`train.*` but the Maestro `rank` options, which MaestroCallback owns).

    `members` (the space's `normalize`) spells every key of `subnet_weights` as the space does; `compile` becomes
    the torch.compile backend's name, or None."""

    accumulate: int = 1
    grad_clip: float | None = 1.0
    subnet_weights: Mapping[str, float] = field(default_factory=dict)
    distill: Distill = field(default_factory=Distill)
    max_nonfinite_steps: int = 3
    max_loss_jump: float | None = (
        100.0  # a step loss this many times the recent median stops the run (divergence.py)
    )
    compile: bool | str | None = False  # see sortednet/train/compiled.py
    members: InitVar[Callable[[Any], Any] | None] = None

    def __post_init__(self, members: Callable[[Any], Any] | None) -> None:
        set_ = object.__setattr__
        set_(self, "compile", compile_backend(self.compile))
        set_(self, "accumulate", number("train.accumulate", self.accumulate, int, low=1))
        if self.grad_clip is not None:
            set_(self, "grad_clip", number("train.grad_clip", self.grad_clip, low=0, low_open=True))
        weights = parse_subnet_weights(self.subnet_weights)
        if members is not None:
            weights = {str(_member(members, k)): v for k, v in weights.items()}
        set_(self, "subnet_weights", weights)
        if isinstance(self.distill, Mapping):
            set_(self, "distill", Distill(**self.distill))
        set_(
            self,
            "max_nonfinite_steps",
            number("train.max_nonfinite_steps", self.max_nonfinite_steps, int, low=1),
        )
        if self.max_loss_jump is not None:
            set_(self, "max_loss_jump", number("train.max_loss_jump", self.max_loss_jump, low=10))


def _member(members: Callable[[Any], Any], key: str) -> Any:
    try:
        return members(key)
    except ValueError as err:
        raise ValueError(f"train.subnet_weights: {err}") from None


def check_distill(distill: Distill, sampler: Any) -> None:
    """In-place distillation learns from the largest member of the same step: the sampler must draw it."""
    if distill.enabled and distill.teacher is None and not sampler.guarantees_largest:
        raise ValueError(
            f"train.distill.enabled=true needs the largest subnet in every step, which sampler={sampler.name!r} "
            "cannot guarantee; use sampler=sandwich or sampler=all"
        )


def parse_subnet_weights(value: Any) -> dict[str, float]:
    """`{"depth=2,ffn=0.25": 2.0}` (YAML) or `["depth=2,ffn=0.25:2.0", ...]` (the command line, where Hydra's
    grammar does not allow '=' or ',' in a key); every weight a number > 0."""
    if not value:
        return {}
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str):
        pairs = []
        for item in value:
            subnet, sep, weight = str(item).rpartition(":")
            if not sep:
                raise ValueError(
                    f"train.subnet_weights item {item!r} is not SUBNET:WEIGHT; "
                    "example: 'train.subnet_weights=[\"depth=2,ffn=0.25:2.0\"]'"
                )
            try:
                pairs.append((subnet, float(weight)))
            except ValueError:
                pairs.append((subnet, weight))
    else:
        raise ValueError(
            f"train.subnet_weights={value!r} is not allowed; allowed: a mapping subnet -> weight, or a list of "
            "'SUBNET:WEIGHT' strings"
        )
    return {str(s): number(f"train.subnet_weights[{s}]", w, low=0, low_open=True) for s, w in pairs}


# ---- Lightning Trainer arguments ------------------------------------------------------------------
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
PRECISIONS = (
    "32-true",
    "32",
    "16-mixed",
    "bf16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "64",
    "transformer-engine",
)


def check_trainer(args: Mapping[str, Any]) -> None:
    """The `trainer.*` values Lightning would reject deep inside fit (or accept silently and misuse)."""
    for key in ("max_steps", "max_epochs"):
        if key in args and args[key] is not None:
            number(f"trainer.{key}", args[key], int, low=-1)
    for key in ("log_every_n_steps", "num_nodes"):
        if key in args:
            number(f"trainer.{key}", args[key], int, low=1)
    for key in ("val_check_interval", "limit_val_batches", "limit_train_batches"):
        value = args.get(key)
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            number(f"trainer.{key}", value, int, low=0 if key.startswith("limit") else 1)
        else:
            number(f"trainer.{key}", value, low=0, high=1, low_open=not key.startswith("limit"))
    for key in ("enable_progress_bar", "enable_checkpointing", "enable_model_summary", "deterministic"):
        if key in args and not isinstance(args[key], bool) and args[key] is not None:
            raise ValueError(f"trainer.{key}={args[key]!r} is not allowed; allowed: true or false")
    devices = args.get("devices", "auto")
    if not (
        devices == "auto"
        or (isinstance(devices, int) and devices >= 1 and not isinstance(devices, bool))
        or (isinstance(devices, Sequence) and not isinstance(devices, str))
    ):
        raise ValueError(
            f"trainer.devices={devices!r} is not allowed; allowed: an int >= 1, a list of ids or auto"
        )
    precision = str(args.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r} is unknown; allowed: {', '.join(PRECISIONS)}")
    accelerator = args.get("accelerator", "auto")
    if accelerator not in ACCELERATORS:
        raise ValueError(
            f"trainer.accelerator={accelerator!r} is unknown; allowed: {', '.join(ACCELERATORS)}"
        )
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(
                f"trainer.accelerator={accelerator!r} but this machine has no GPU (torch.cuda.is_available() is "
                "False); allowed here: cpu or auto"
            )
