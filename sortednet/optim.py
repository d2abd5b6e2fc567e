"""AdamW for nested training: fused where the device has the kernel, and (`optim.update=touched`) an update of
only the parts of each tensor that some subnet of the step used. `optimizer(nested, ...)` (`sn.optimizer`) gives
Python users the trainer's optimizer: the same parameter groups and the same step.

`update=all` (the default) is torch's AdamW: every tensor with a gradient moves as a whole, so the rows and
columns of an active layer that no subnet of the step used still decay and follow their momentum, as in
slimmable / US-Nets training. `update=touched` moves only the union of the boxes the wrappers recorded in
`NestState.touched` during the step's forwards (a parameter used outside the wrappers counts as wholly used):
an unused row keeps its value and its moments until a subnet uses it again (lazy Adam, as SparseAdam). The
step count stays per tensor, so bias correction is that of the tensor. The union of prefix boxes is split into
disjoint boxes; contiguous ones (whole rows) go to the fused kernel, strided ones (a column prefix) to the
for-each path, since fused kernels read a strided view as if it were dense.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.optim.adamw import adamw

from .layers import Box


def fused_supported(params: Iterable[torch.Tensor]) -> bool:
    """torch has a fused AdamW kernel for every parameter (plain floating tensors on a device that has one)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:  # an older torch: CUDA only
        devices = {"cuda"}
    params = list(params)
    return bool(params) and all(
        type(p) in (torch.Tensor, torch.nn.Parameter) and p.is_floating_point() and p.device.type in devices
        for p in params
    )


def disjoint_boxes(boxes: Sequence[Box], shape: Sequence[int]) -> list[tuple[slice, ...]] | None:
    """The union of `boxes` as disjoint index tuples; None when it is the whole tensor."""
    unique = set(boxes)
    whole = tuple((0, n) for n in shape)
    if whole in unique:
        return None
    if len(shape) == 1:
        spans = sorted(b[0] for b in unique)
        merged: list[list[int]] = []
        for start, stop in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        return None if merged == [[0, shape[0]]] else [(slice(a, b),) for a, b in merged]
    rows = sorted({r for b in unique for r in b[0]})
    cols = sorted({c for b in unique for c in b[1]})
    bands: list[tuple[int, int, tuple[tuple[int, int], ...]]] = []
    for r0, r1 in zip(rows, rows[1:], strict=False):
        runs: list[list[int]] = []
        for c0, c1 in zip(cols, cols[1:], strict=False):
            if any(b[0][0] <= r0 and r1 <= b[0][1] and b[1][0] <= c0 and c1 <= b[1][1] for b in unique):
                if runs and runs[-1][1] == c0:
                    runs[-1][1] = c1
                else:
                    runs.append([c0, c1])
        spans2 = tuple((a, b) for a, b in runs)
        if bands and bands[-1][1] == r0 and bands[-1][2] == spans2:
            bands[-1] = (bands[-1][0], r1, spans2)
        elif spans2:
            bands.append((r0, r1, spans2))
    out = [(slice(r0, r1), slice(c0, c1)) for r0, r1, spans in bands for c0, c1 in spans]
    return None if out == [(slice(0, shape[0]), slice(0, shape[1]))] else out


class NestedAdamW(torch.optim.AdamW):
    """`torch.optim.AdamW` (fused where `fused_supported`), or with `touched` (the dict the model's wrappers
    fill, `NestState.touched`) an AdamW step over only the used parts of each tensor; the state (step,
    exp_avg, exp_avg_sq per tensor) is AdamW's own, so checkpoints resume under either mode."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        touched: dict[torch.Tensor, list[Box]] | None = None,
        fused: bool | None = None,
    ) -> None:
        groups = list(params)
        flat = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
        # touched: never fused as a whole (its step() is its own, and a GradScaler must unscale before it);
        # fused per contiguous part instead
        fused = touched is None and (fused_supported(flat) if fused is None else fused)
        self.touched = touched
        self.fused_parts = touched is not None and fused_supported(flat)
        super().__init__(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        if self.touched is None:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            parts: dict[bool, tuple[list[torch.Tensor], ...]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # AdamW's own state, so that either mode resumes the other's checkpoint
                    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
                    state["step"] = torch.tensor(0.0, dtype=scalar)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                step = float(state["step"])
                boxes = disjoint_boxes(self.touched.get(p, ()), p.shape) if p in self.touched else None
                for box in boxes or [()]:
                    views = [t[box] if box else t for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"])]
                    fast = self.fused_parts and all(v.is_contiguous() for v in views)
                    lists = parts.setdefault(fast, ([], [], [], [], []))
                    for target, view in zip(lists, views, strict=False):
                        target.append(view)
                    lists[4].append(torch.tensor(step, device=p.device if fast else "cpu"))
                state["step"] += 1
            beta1, beta2 = group["betas"]
            for fast, (ps, grads, avgs, sqs, steps) in parts.items():
                adamw(
                    ps, grads, avgs, sqs, [], steps, foreach=None, fused=fast or None, amsgrad=False,
                    beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                    eps=group["eps"], maximize=False,
                )  # fmt: skip
        self.touched.clear()
        return loss


UPDATES = ("all", "touched")


def head_parameter_ids(model: torch.nn.Module) -> set[int]:
    """The task head: parameters of the top model outside `model.base_model` (a fresh classifier, a head per
    depth); a head tied to the input embeddings belongs to the base model."""
    base = {id(p) for p in model.base_model.parameters()}
    return {id(p) for p in model.parameters() if id(p) not in base}


def param_groups(
    model: torch.nn.Module, weight_decay: float, head_lr: float | None = None, head: set[int] | None = None
) -> list[dict[str, Any]]:
    """AdamW's groups as sortednet-train makes them: weights decay, biases and norms do not; with `head_lr`, the
    parameters in `head` (ids; default `head_parameter_ids`) in groups of their own at that learning rate."""
    if head_lr is not None and head is None:
        head = head_parameter_ids(getattr(model, "model", model))
    head = head or set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((p.ndim >= 2 and "norm" not in name.lower(), id(p) in head), []).append(p)
    return [
        {"params": groups.get((decays, in_head), []), "weight_decay": weight_decay if decays else 0.0}
        | ({"lr": head_lr} if in_head else {})
        for in_head in ((False, True) if head else (False,))
        for decays in (True, False)
    ]


def optimizer(
    nested: torch.nn.Module,
    lr: float = 1e-3,
    *,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    update: str = "touched",
    head_lr: float | None = None,
    fused: bool | None = None,
) -> NestedAdamW:
    """The optimizer sortednet-train steps with, for a training loop of your own over `nested.use(subnet)`:
    AdamW (fused where the device has the kernel) over sortednet-train's groups (`param_groups`).

    `update="touched"` (the default here) steps only the rows and columns of each tensor that a subnet of the
    step read (recorded by the nested model's wrappers during the step's forwards with grad enabled; `step()`
    forgets them): a sub-model's step then costs about what the dense model of its shape costs, where torch's
    AdamW steps every full-size tensor a subnet touched. `update="all"` is torch's AdamW (every tensor with a
    gradient moves as a whole; the unused rows decay and follow their momentum, as in slimmable training).
    Call `optimizer.zero_grad(set_to_none=True)` after each step."""
    if update not in UPDATES:
        raise ValueError(f"update={update!r} is unknown; allowed: {', '.join(UPDATES)}")
    if not isinstance(nested, torch.nn.Module) or not hasattr(nested, "space"):
        raise ValueError(
            f"optimizer() takes a nested or stitched model (sn.nest, sn.stitch); got {type(nested).__name__}"
        )
    touched = None
    if update == "touched":
        state = getattr(nested, "state", None)
        if state is None:
            raise ValueError(
                f"update='touched' records the slices nested wrappers read; a {type(nested).__name__} runs whole "
                "tensors: allowed: update='all'"
            )
        touched = state.touched = {}
    return NestedAdamW(
        param_groups(nested, weight_decay, head_lr),
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        touched=touched,
        fused=fused,
    )
