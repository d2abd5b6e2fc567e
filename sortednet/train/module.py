"""SortedNetModule: the LightningModule that trains every member of a many-in-one model (nested or stitched).

One optimizer step = `accumulate` micro-batches x K sampled subnets, each a forward and a backward (the
graph is freed after each backward, so memory is that of one subnet). The update is the weighted mean over
subnets and batches. Gradients are reduced across ranks once per optimizer step (see distributed.py).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.optim.lr_scheduler import LambdaLR

from ..many import ManyInOne
from ..optim import NestedAdamW, head_parameter_ids, param_groups
from ..sampling import Sampler
from ..spec import Subnet
from ..tasks import Task
from .compiled import compile_model, compiled_graphs
from .console import say
from .distill import Distiller
from .distributed import allreduce_gradients, needs_allreduce, reducer_off, world_size
from .divergence import Diverged, LossWatch
from .fsdp import configure_sharding, is_sharded_model
from .options import Optim, Train, check_distill

# validation metrics are summed over ranks (strategy.reduce) before they are logged, so sync_dist is not needed
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/")


def default_val_subnets(nested: ManyInOne) -> list[Subnet]:
    ordered = nested.space.subnets()
    picks = [ordered[0], ordered[len(ordered) // 2], ordered[-1]]
    return list(dict.fromkeys(picks))


def lr_lambda(schedule: str, warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
        return min_ratio + (1 - min_ratio) * decay

    return factor


class SortedNetModule(L.LightningModule):
    """Trains every member of `nested` with `sampler`. `optim` and `train` are the checked options
    (sortednet.train.options: what sortednet-train's config check made), or their fields as a mapping or as
    keyword arguments (`accumulate=2, distill={"enabled": True}`), checked here."""

    def __init__(
        self,
        nested: ManyInOne,
        task: Task,
        sampler: Sampler,
        optim: Optim | Mapping[str, Any] | None = None,
        train: Train | Mapping[str, Any] | None = None,
        val_subnets: Sequence[Subnet | str] | None = None,
        seed: int = 0,
        teacher: torch.nn.Module | None = None,
        **train_options: Any,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.nested, self.task, self.sampler = nested, task, sampler
        self.optim = optim if isinstance(optim, Optim) else Optim(**(optim or {}))
        if not isinstance(train, Train):
            train = Train(**{**(train or {}), **train_options}, members=nested.space.normalize)
            check_distill(train.distill, sampler)
        self.accumulate, self.grad_clip, self.distill = train.accumulate, train.grad_clip, train.distill
        # the frozen teacher (train.distill.teacher) is no parameter of this module: not in its state dict, its
        # optimizer or DDP's buckets; on_fit_start puts it on the module's device
        self.__dict__["teacher"] = teacher
        self.distiller = Distiller(train.distill, task, teacher, getattr(nested, "kept", None))
        self.max_nonfinite_steps, self.seed = train.max_nonfinite_steps, int(seed)
        self.loss_watch = LossWatch(train.max_loss_jump)
        space = nested.space
        self.val_subnets = [
            space.normalize(s) if isinstance(s, str) else s
            for s in (val_subnets or default_val_subnets(nested))
        ]
        self.subnet_weights = dict(train.subnet_weights)
        self.nonfinite_in_a_row = 0  # optimizer steps skipped in a row for a NaN/inf loss or gradient
        self.jumps_in_a_row = 0  # optimizer steps skipped in a row for a loss spike (LossWatch)
        self.skipped_steps = 0
        self._step_losses: list[tuple[Subnet, torch.Tensor]] = []
        self.micro = 0  # micro-batches done in the current optimizer step
        self._step_loss: torch.Tensor | float = 0.0  # mean loss of the current optimizer step so far
        self._step_started = time.perf_counter()
        self._val_sums: dict[Subnet, torch.Tensor] = {}
        self.compile_backend = train.compile
        self._train_forward: Callable[..., Any] | None = None  # the compiled model's call (train.compile)

    # ---- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.optim
        head = head_parameter_ids(self.nested.model) if o.head_lr is not None else set()
        touched = None
        if o.update == "touched":
            if getattr(self.nested, "state", None) is None:
                raise ValueError(
                    f"optim.update='touched' needs a nested model (it records the slices each subnet reads); "
                    f"a {type(self.nested).__name__} runs whole tensors: allowed: optim.update=all"
                )
            if is_sharded_model(self.nested):
                raise ValueError(
                    "optim.update='touched' is not supported under FSDP (its optimizer holds shards, not the "
                    "tensors the subnets slice); allowed with trainer=fsdp: all"
                )
            touched = self.nested.state.touched = {}
        optimizer = NestedAdamW(
            param_groups(self.nested, o.weight_decay, o.head_lr, head),
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            touched=touched,
            fused=False if self._scaler() is not None else None,  # Lightning unscales, then clips: not fused
        )
        total = (
            self.trainer.max_steps
            if self.trainer.max_steps > 0
            else self.trainer.estimated_stepping_batches // self.accumulate
        )
        schedule = LambdaLR(optimizer, lr_lambda(o.schedule, o.warmup_steps, int(total), o.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_train_start(self) -> None:
        """A resume: Lightning restored the checkpoint's optimizer and scheduler, hyperparameters included; the
        configured ones are what this run uses (sortednet/train/resume.py), so they are set again here."""
        if not self.trainer.ckpt_path:
            return
        o, schedule = self.optim, self.lr_schedulers()
        optimizer = (
            self.optimizers().optimizer if hasattr(self.optimizers(), "optimizer") else self.optimizers()
        )
        groups = optimizer.param_groups
        rates = [o.lr, o.lr, o.head_lr, o.head_lr][: len(groups)]
        for group, lr, decays in zip(groups, rates, (True, False, True, False), strict=False):
            group.update(
                betas=o.betas, eps=o.eps, weight_decay=o.weight_decay if decays else 0.0, initial_lr=lr
            )
        schedule.base_lrs = list(rates)
        for group, lr, factor in zip(
            groups, rates, (f(schedule.last_epoch) for f in schedule.lr_lambdas), strict=True
        ):
            group["lr"] = lr * factor
        schedule._last_lr = [g["lr"] for g in groups]

    def _scaler(self) -> Any:
        """The GradScaler of `precision=16-mixed`, or None."""
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def configure_model(self) -> None:
        """Under strategy="fsdp2_nested" (any ModelParallelStrategy): FSDP2, one unit per layer (fsdp.py)."""
        configure_sharding(self)

    def on_fit_start(self) -> None:
        """The teacher to the module's device; `train.compile`: compile after the strategy placed and wrapped the
        model (sortednet/train/compiled.py)."""
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.compile_backend and self._train_forward is None:
            say(
                f"train.compile={self.compile_backend}: each sub-model compiles the first time the sampler draws it "
                f"({len(self.nested.space)} at most): the first steps are slow; train/compiled_graphs counts them"
            )
            self._train_forward = compile_model(
                self.nested.model, self.compile_backend, len(self.nested.space)
            )

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Every backward (the step's and any callback's) runs with DDP's reducer off: gradients are
        all-reduced once per optimizer step in `_optimizer_step` (see distributed.py)."""
        with reducer_off(self.trainer.strategy.model):
            super().manual_backward(loss, *args, **kwargs)

    def _weights(self, subnets: Sequence[Subnet]) -> list[float]:
        weights = [self.subnet_weights.get(str(s), 1.0) for s in subnets]
        total = sum(weights)
        return [w / total for w in weights]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        step, micro = self.global_step, self.micro
        torch.manual_seed(
            hash((self.seed, step, micro, self.global_rank)) % 2**62
        )  # dropout: f(seed, step, rank)
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        subnets = self.sampler.sample(step, micro)
        weights = self._weights(subnets)
        distiller, total = self.distiller, 0.0
        distiller.begin(inputs)
        hidden = {"output_hidden_states": True} if distiller.hidden else {}
        forward = self._train_forward or self.nested
        for subnet, weight in zip(subnets, weights, strict=True):
            with self.nested.use(subnet):
                output = forward(**inputs, **hidden)
                loss = self.task.loss(output.logits, labels)
                objective = distiller.objective(subnet, output, loss, labels)
                self.manual_backward(objective * weight / self.accumulate)
            total += weight * loss.detach()
            self._step_losses.append((subnet, loss.detach()))
            name = "per_layer" if getattr(subnet, "per_layer", False) else subnet  # one key, not one per draw
            self.log(f"train/loss/{name}", loss.detach(), on_step=True, on_epoch=False)
        # this rank's loss on this micro-batch; train/step_loss (once per step) is the mean over all ranks
        self.log("train/loss", total, on_step=True, on_epoch=False, prog_bar=True)
        self._step_loss = total / self.accumulate + (self._step_loss if self.micro else 0.0)
        self.micro += 1
        if self.micro == self.accumulate:
            self._optimizer_step(batch_size=labels.shape[0])
        return total

    def _optimizer_step(self, batch_size: int) -> None:
        optimizer, schedule = self.optimizers(), self.lr_schedulers()
        step_loss = torch.as_tensor(self._step_loss, dtype=torch.float32, device=self.device).reshape(1)
        losses, self._step_losses, self.micro = self._step_losses, [], 0
        # with a GradScaler (16-mixed) an inf gradient is the scaler's to skip (it then lowers the scale)
        bad = self._local_nonfinite(losses, grads=self._scaler() is None)
        jump = None if float(bad) else self.loss_watch.exploded(float(step_loss))
        flags = torch.cat([bad, torch.tensor([float(jump is not None)], device=bad.device)])
        # DDP: one all-reduce per step, carrying the loss and the flags (sharded strategies, FSDP, reduce-scatter
        # in each backward themselves; the flags then take one 2-element all-reduce)
        if needs_allreduce(self.trainer.strategy.model):
            carried = torch.cat([step_loss, flags])
            allreduce_gradients(self.nested.parameters(), extra=carried)
            step_loss, flags = carried[:1], carried[1:]
        elif world_size() > 1:
            torch.distributed.all_reduce(flags)
        bad, exploded = flags[:1], float(flags[1]) != 0
        # a loss spike is skipped like a non-finite step (one odd batch); two in a row are a divergence, stopped
        # before either is applied, so the last saved pair is the last good one
        self.jumps_in_a_row = self.jumps_in_a_row + 1 if exploded else 0
        if self.jumps_in_a_row >= 2:
            what = jump or "another rank's step loss exploded"
            raise Diverged(
                f"training diverged at step {self.global_step}: {what}, 2 steps in a row (train.max_loss_jump="
                f"{self.loss_watch.factor:g}); neither was applied and the last saved checkpoint is kept as it "
                "was; lower optim.lr, raise optim.warmup_steps or set train.grad_clip"
            )
        if float(bad) != 0 or exploded:  # every rank skips, or none
            optimizer.zero_grad(set_to_none=True)
            self._forget_touched()
            self._skip(losses, nonfinite=not exploded)
            return
        self.nonfinite_in_a_row = 0
        optimizer.step()  # clips in on_before_optimizer_step, after a GradScaler's unscale
        optimizer.zero_grad(set_to_none=True)
        self._forget_touched()
        schedule.step()
        now = time.perf_counter()
        samples = batch_size * self.accumulate * world_size()
        self.log(
            "train/samples_per_s", samples / max(now - self._step_started, 1e-9), on_step=True, on_epoch=False
        )
        self.log("train/lr", schedule.get_last_lr()[0], on_step=True, on_epoch=False)
        self.log("train/step_loss", step_loss[0], on_step=True, on_epoch=False)
        if self._train_forward is not None:  # a rise after the first steps means recompiles
            self.log("train/compiled_graphs", float(compiled_graphs()), on_step=True, on_epoch=False)
        self._step_started = now

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Norm clipping, run by Lightning inside `optimizer.step()`: after the gradients are unscaled."""
        if not self.grad_clip:
            return
        plugin = self.trainer.precision_plugin
        if isinstance(plugin, MixedPrecision) and plugin.scaler is None:
            # bf16 autocast has no scaler to unscale, but Lightning refuses clipping beside a fused optimizer
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.nested.parameters() if p.grad is not None], self.grad_clip
            )
            return
        self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def _forget_touched(self) -> None:
        """`update=touched`: the boxes recorded this step are spent (a skipped step updates nothing)."""
        touched = getattr(getattr(self.nested, "state", None), "touched", None)  # nested models only
        if touched is not None:
            touched.clear()

    def _local_nonfinite(
        self, losses: Sequence[tuple[Subnet, torch.Tensor]], grads: bool = True
    ) -> torch.Tensor:
        """1.0 when a loss or (`grads`) gradient of this step on this rank is NaN or inf (FSDP2: its local
        shard)."""
        checks = [torch.isfinite(loss) for _, loss in losses]
        local = [
            p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            for p in (self.nested.parameters() if grads else ())
            if p.grad is not None
        ]
        if local:  # one read of every gradient (a NaN or inf makes the norm one); isfinite() per element took
            # ~7x as long: 6-9% of a sandwich step's CPU time (bench.sandwich_step)
            finite = torch.isfinite(torch.nn.utils.get_total_norm(local, error_if_nonfinite=False))
            if not finite:  # a NaN or inf, or finite gradients whose squares overflow: look again, exactly
                finite = torch.stack([torch.isfinite(g).all() for g in local]).all()
            checks.append(finite.to(checks[0].device) if checks else finite)
        finite = torch.stack(checks).all() if checks else torch.tensor(True)
        return (~finite).float().reshape(1).to(self.device)

    def _skip(self, losses: Sequence[tuple[Subnet, torch.Tensor]], nonfinite: bool = True) -> None:
        """A skipped step (non-finite, or a loss spike) changes no weight and does not count as an optimizer
        step."""
        self.nonfinite_in_a_row += int(nonfinite)
        self.skipped_steps += 1
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False)
        if not nonfinite or self.nonfinite_in_a_row < self.max_nonfinite_steps:
            return
        subnet, loss = next(((s, v) for s, v in losses if not torch.isfinite(v)), (None, None))
        what = f"subnet {subnet} has loss {float(loss)}" if subnet is not None else "a gradient is NaN or inf"
        raise Diverged(
            f"training diverged at step {self.global_step}: {what}, {self.nonfinite_in_a_row} optimizer steps "
            f"in a row (train.max_nonfinite_steps={self.max_nonfinite_steps}) were skipped as NaN or inf; the "
            "last saved checkpoint is kept as it was; lower optim.lr or raise optim.warmup_steps"
        )

    # ---- validation ---------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = {}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        for subnet in self.val_subnets:
            with self.nested.use(subnet):
                stats = self.task.stats(self.nested(**inputs).logits, labels)
            self._val_sums[subnet] = self._val_sums.get(subnet, 0) + stats

    def on_validation_epoch_end(self) -> None:
        for subnet, sums in self._val_sums.items():
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            for metric, value in self.task.summarize(sums).items():
                self.log(
                    f"val/{metric}/{subnet}",
                    value,
                    sync_dist=False,
                    prog_bar=subnet == self.val_subnets[-1] and metric == self.task.metric,
                )

    # ---- checkpoint state ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sortednet"] = {
            "sampler": self.sampler.state_dict(),
            "micro": self.micro,
            "space": self.nested.space.to_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("sortednet")
        if state is None:
            raise ValueError("checkpoint has no sortednet state; it was not written by sortednet-train")
        if state["space"] != self.nested.space.to_dict():
            raise ValueError(
                f"checkpoint nesting space {state['space']} differs from the configured "
                f"{self.nested.space.to_dict()}; resume with the run's own nesting config"
            )
        self.sampler.load_state_dict(state["sampler"])
        self.micro = int(state["micro"])
