"""Sliceable wrappers injected into an unmodified model (PEFT-style: the original module is `base_layer`).

Every wrapper reads the active sizes from one shared `NestState`, so switching a subnet sets a few ints.
A wrapper slices views of its base weights (`W[:o, :i]`): nothing is copied, and a smaller subnet does
less work. The input width is the width of what comes in; the output width is read from the state.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .slice_grad import embedding, linear

# Roles: which active size an axis follows. "q" = heads * head_dim, "kv" = kv_heads * head_dim.
ROLES = ("depth", "hidden", "q", "kv", "ffn", "rank")
FIXED = "fixed"  # an output that never shrinks (a classifier's labels, an LM head's vocabulary)


Box = tuple[tuple[int, int], ...]  # a (start, stop) per dimension of a parameter: the part a forward used


class NestState:
    """The active sizes of one layer, or of the model outside its layers (the hidden size, the depth): a handful
    of ints its wrappers read. A nested model has one per layer (sizes may differ per layer) and one shared.

    `touched`, when a dict (the optimizer's `update=touched`), collects per parameter the boxes that forwards
    with gradient used since the last optimizer step; None (the default) records nothing. Every layer's state
    records into the shared state's dict (`shared`).
    """

    __slots__ = (*ROLES, "touched", "shared")

    def __init__(self, sizes: Mapping[str, int], shared: NestState | None = None) -> None:
        self.touched: dict[nn.Parameter, list[Box]] | None = None
        self.shared: NestState = self if shared is None else shared
        self.set(sizes)

    def touch(self, param: torch.Tensor | None, *box: tuple[int, int]) -> None:
        """Record that a forward used `param[box]` (the whole parameter when no box is given)."""
        touched = self.shared.touched
        if touched is None or param is None or not param.requires_grad or not torch.is_grad_enabled():
            return
        touched.setdefault(param, []).append(box or tuple((0, n) for n in param.shape))

    def recording(self) -> bool:
        return self.shared.touched is not None

    def set(self, sizes: Mapping[str, int]) -> None:
        for role in ROLES:
            setattr(self, role, int(sizes[role]))

    def as_dict(self) -> dict[str, int]:
        return {role: getattr(self, role) for role in ROLES}


class Wrapper(nn.Module):
    """The base of every sortednet wrapper (as PEFT's BaseTunerLayer): the original module is `base_layer`, and
    `unwrapped()` gives back the plain module. Attributes the wrapper lacks are read from `base_layer`, so model
    code that inspects it still works; assigning one of the base layer's parameters (HF's tie_weights) assigns it
    on the base layer."""

    def unwrapped(self) -> nn.Module:
        """The plain module this wrapper stands for, at full size."""
        return self._modules["base_layer"]

    def __setattr__(self, name: str, value) -> None:
        base = self.__dict__.get("_modules", {}).get("base_layer")
        if base is not None and name in base._parameters:
            setattr(base, name, value)
        else:
            super().__setattr__(name, value)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self._modules.get("base_layer")
            if base is None:
                raise
            return getattr(base, name)


class SlicedLinear(Wrapper):
    """`nn.Linear` or GPT-2 `Conv1D` whose output is one or more blocks, each a prefix of its full block.

    `blocks` is ((full_offset, role), ...): a plain projection has one block at offset 0; GPT-2's fused
    c_attn has three (q, k, v), each sliced on its own.
    """

    def __init__(
        self, base_layer: nn.Module, state: NestState, blocks: Sequence[tuple[int, str]], in_role: str
    ):
        super().__init__()
        if not isinstance(base_layer, (nn.Linear, Conv1D)):
            raise TypeError(f"cannot slice {type(base_layer).__name__}; expected nn.Linear or Conv1D")
        self.base_layer = base_layer
        self.state = state
        self.blocks = tuple(blocks)
        self.out_roles = tuple(role for _, role in self.blocks)
        self.in_role = in_role
        self.transposed = isinstance(base_layer, Conv1D)  # Conv1D stores weight as (in, out)
        w = base_layer.weight
        self.full_out, self.full_in = (
            (w.shape[1], w.shape[0]) if self.transposed else (w.shape[0], w.shape[1])
        )

    def _block_widths(self) -> list[int]:
        if self.out_roles == (FIXED,):
            return [self.full_out]
        return [getattr(self.state, role) for role in self.out_roles]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        widths = self._block_widths()
        in_width = x.shape[-1]
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if in_width == self.full_in and sum(widths) == self.full_out:
            self.state.touch(weight)
            self.state.touch(bias)
            return self.base_layer(x)
        outs = []
        for (offset, _), width in zip(self.blocks, widths, strict=True):
            self._touch(weight, bias, offset, offset + width, in_width)
            outs.append(linear(x, weight, bias, offset, offset + width, self.transposed))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def _touch(self, weight, bias, start: int, stop: int, in_width: int) -> None:
        if self.state.shared.touched is None:
            return
        rows, cols = (start, stop), (0, in_width)
        self.state.touch(weight, *((cols, rows) if self.transposed else (rows, cols)))
        self.state.touch(bias, rows)

    def extra_repr(self) -> str:
        return f"blocks={self.blocks}, in_role={self.in_role!r}, transposed={self.transposed}"


def layer_rank(k: int, full_rank: int, max_rank: int, absolute: bool) -> int:
    """A factorised layer's rank for the space's rank size k (k is relative to the largest factorised layer:
    absolute sizes are capped at each layer's own rank, fractions scale with it)."""
    if absolute:
        return min(k, full_rank)
    return max(1, min(full_rank, round(k * full_rank / max_rank)))


class LowRankLinear(SlicedLinear):
    """A SlicedLinear whose weight is factorised W = U @ V (U: out x R, V: R x in), the components ordered by
    singular value; the active rank r uses U[:, :r] and V[:r] (Maestro's ordered representation).

    `cap` is where progressive shrinking cut the trailing components; `sampled` a per-layer rank drawn for
    one training step (ordered dropout per layer). The base layer keeps only its bias.
    """

    def __init__(self, base_layer, state, blocks, in_role, max_rank: int, absolute: bool, init: bool = True):
        super().__init__(base_layer, state, blocks, in_role)
        weight = base_layer.weight
        self.full_rank = min(self.full_out, self.full_in)
        self.max_rank, self.absolute = max_rank, absolute
        self.cap = self.full_rank
        self.sampled: int | None = None
        self._ranks: dict[int, int] = {}
        dense = (weight.t() if self.transposed else weight).detach()
        if init and dense.device.type != "meta":
            u, sigma, vh = torch.linalg.svd(dense.float(), full_matrices=False)
            root = sigma.sqrt()
            u, v = (u * root).to(weight.dtype), (root[:, None] * vh).to(weight.dtype)
        else:
            u = torch.empty(self.full_out, self.full_rank, dtype=weight.dtype, device=weight.device)
            v = torch.empty(self.full_rank, self.full_in, dtype=weight.dtype, device=weight.device)
        self.U = nn.Parameter(u.contiguous(), requires_grad=weight.requires_grad)
        self.V = nn.Parameter(v.contiguous(), requires_grad=weight.requires_grad)
        del base_layer.weight
        base_layer.register_parameter("weight", None)

    def rank(self) -> int:
        k = self.state.rank
        r = self._ranks.get(k)
        if r is None:
            r = self._ranks[k] = layer_rank(k, self.full_rank, self.max_rank, self.absolute)
        r = min(r, self.cap)
        return r if self.sampled is None else min(r, self.sampled)

    def dense_weight(self) -> torch.Tensor:
        """U @ V at full rank, in the base layer's own layout."""
        w = self.U[:, : self.cap] @ self.V[: self.cap]
        return w.t() if self.transposed else w

    def unwrapped(self) -> nn.Module:
        """The base layer with the factors fused back into one dense weight."""
        self.base_layer.weight = nn.Parameter(self.dense_weight().detach().clone())
        return self.base_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, widths, bias = self.rank(), self._block_widths(), self.base_layer.bias
        self.state.touch(self.V, (0, r), (0, x.shape[-1]))
        h = linear(x, self.V, None, 0, r)
        outs = []
        for (offset, _), width in zip(self.blocks, widths, strict=True):
            self.state.touch(self.U, (offset, offset + width), (0, r))
            self.state.touch(bias, (offset, offset + width))
            outs.append(linear(h, self.U, bias, offset, offset + width))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, full_rank={self.full_rank}, cap={self.cap}"


class LayerList(nn.ModuleList):
    """A model's layer (or block) list that runs only the layers in `active` (None: all of them), in that order.

    The one layer list of every many-in-one kind: a nested model's depth (the kept layers), a stage's first
    blocks, a stitch's route (the front anchor's first blocks, the stitching layer, the back anchor's last).
    Setting `active` is the switch: a tuple of references, no module is copied. Indexing by int and `len()` see
    the model's own layers (state dicts and introspection are unchanged); iterating, and slicing as HF models do
    (`self.layers[: config.num_hidden_layers]`: the whole range means the whole route), see the active ones.
    """

    def __init__(self, layers: nn.Module) -> None:
        super().__init__(list(layers))
        self.active: tuple[nn.Module, ...] | None = None
        self.container = type(layers)  # what `unwrapped()` gives back: ModuleList or Sequential

    def __iter__(self) -> Iterator[nn.Module]:
        active = self.active
        return iter(self._modules.values()) if active is None else iter(active)

    def every_layer(self) -> list[nn.Module]:
        """The model's own layers, whatever is active."""
        return list(self._modules.values())

    def __getitem__(self, idx):  # type: ignore[override]
        if isinstance(idx, slice):
            active = list(self)
            if idx.indices(len(self._modules)) == (0, len(self._modules), 1):
                return active
            return active[idx]
        return super().__getitem__(idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # a Sequential's call (ConvNeXt's stages call theirs)
        for layer in self:
            x = layer(x)
        return x

    def unwrapped(self) -> nn.Module:
        layers = self.every_layer()
        return nn.Sequential(*layers) if issubclass(self.container, nn.Sequential) else nn.ModuleList(layers)


def replace(root: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` where `root.get_submodule(path)` was."""
    parent_path, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, attr, new)


def unwrap(root: nn.Module) -> nn.Module:
    """Replace every sortednet wrapper and layer list under `root` by the plain module it stands for (innermost
    first, so a wrapper inside a wrapper's copies goes too); returns `root`."""
    for name, module in reversed(list(root.named_modules())):
        if isinstance(module, (Wrapper, LayerList)) and name:
            replace(root, name, module.unwrapped())
    return root


def inside(root: nn.Module, path: str, kinds: tuple[type, ...]) -> bool:
    """Whether the module at `path` lies inside a module of one of `kinds` (then it is that module's concern)."""
    module = root
    for part in path.split(".")[:-1] if path else []:
        module = getattr(module, part)
        if isinstance(module, kinds):
            return True
    return False


class SlicedNorm(Wrapper):
    """LayerNorm or HF RMSNorm over the first d features of the residual stream (d = the input's width).

    Its weight and bias keep autograd's slice gradient: 1-D, `hidden` values, so the full-size zero fill is
    negligible, and the fused norm kernels stay."""

    def __init__(self, base_layer: nn.Module, state: NestState | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.state = state
        self.full = base_layer.weight.shape[0]
        self.rms = not isinstance(base_layer, nn.LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        base = self.base_layer
        if self.state is not None and self.state.recording():
            self.state.touch(base.weight, (0, d))
            self.state.touch(getattr(base, "bias", None), (0, d))
        if d == self.full:
            return base(x)
        if not self.rms:
            bias = None if base.bias is None else base.bias[:d]
            return F.layer_norm(x, (d,), base.weight[:d], bias, base.eps)
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + base.variance_epsilon)
        return base.weight[:d] * h.to(dtype)


class SlicedEmbedding(Wrapper):
    """nn.Embedding whose vectors are cut to the first `state.hidden` features."""

    def __init__(self, base_layer: nn.Embedding, state: NestState) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.state = state

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        d, base = self.state.hidden, self.base_layer
        self.state.touch(base.weight, (0, base.num_embeddings), (0, d))
        if d == base.embedding_dim:
            return base(ids)
        return embedding(ids, base, d)


class SlicedOutput(Wrapper):
    """Any module whose output features are independent of each other (ViT's patch + position embeddings):
    run it, keep the first `state.hidden` features. The base module runs whole, so its parameters' gradients
    are autograd's own (the cut is of an activation, not a weight) and `update=touched` counts them as wholly
    used."""

    def __init__(self, base_layer: nn.Module, state: NestState) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.state = state

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        d = self.state.hidden
        return out if d == out.shape[-1] else out[..., :d]


def is_norm(module: nn.Module) -> bool:
    rms = type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
    return (isinstance(module, nn.LayerNorm) and module.weight is not None) or rms


def original_key(name: str) -> str:
    """A wrapped model's parameter or module name under the original model's (every `base_layer` dropped)."""
    return ".".join(part for part in name.split(".") if part != "base_layer")
