"""nest(): inject sliceable layers into an unmodified model; NestedModel: switch, extract, save."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from . import hf
from .checkpoint import write
from .cost import param_cost_fn
from .export import build_submodel, factorized_ranks
from .families import Family, StageFamily, family_for
from .heads import DepthHeads, check_head, head_aliases
from .heads import apply as apply_heads
from .layers import (
    FIXED,
    LowRankLinear,
    NestedLayerList,
    NestState,
    SlicedEmbedding,
    SlicedLinear,
    SlicedNorm,
    SlicedOutput,
)
from .pooling import apply as apply_pooling
from .pooling import check_pooling, pooled_refusal
from .spec import NestingSpace, Subnet

WRAPPERS = (SlicedLinear, SlicedNorm, SlicedEmbedding, SlicedOutput)


def nest(
    model: nn.Module,
    space: NestingSpace | str | Mapping[str, Any],
    *,
    family: Family | None = None,
    check: bool | None = None,
    pooling: str | None = None,
    head: str | None = None,
    bn: str | None = None,
) -> NestedModel:
    """Wrap `model` in place so that every subnet of `space` can run; at the largest it is unchanged.

    `pooling="mean"`: the model's own first-token head (BERT's pooler, RoBERTa's classification head) reads the
    masked mean of the last hidden states instead of [CLS] (sortednet.pooling), for encoders trained that way.

    `head="per_depth"`: every depth of the space gets its own copy of the head (sortednet.heads); a sub-model
    counts and exports only its own.

    `family` defaults to the one registered for `config.model_type`. A family not marked `verified` is first
    checked on a tiny random model of the same class (`sortednet.testing.quick_check`, well under a second,
    once per process); `check=True` runs that check for any family, `check=False` skips it.

    Stage-based vision families (ResNet, ConvNeXt) nest `channels` and per-stage `depth` (sortednet.conv_nest);
    `bn="switchable"` gives each smaller width its own BatchNorm (Slimmable), else calibrate the statistics of
    each subnet with `sortednet.calibrate` (US-Nets)."""
    if isinstance(model, NestedModel) or any(isinstance(m, SlicedLinear) for m in model.modules()):
        raise ValueError("model is already nested; nest the original model once (or call unnest() first)")
    if not isinstance(space, NestingSpace):
        space = NestingSpace.parse(space) if isinstance(space, str) else NestingSpace(dict(space))
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "base_model"):
        raise ValueError(f"nest() takes a transformers PreTrainedModel; got {type(model).__name__}")
    family = family or family_for(config)
    if isinstance(family, StageFamily):
        from .conv_nest import nest_stages

        if pooling or head not in (None, "shared"):
            raise ValueError(
                f"pooling/head options are for transformers; model family {family.name!r} takes neither"
            )
        return nest_stages(model, space, family, bn)
    if bn is not None:
        raise ValueError(
            f"bn={bn!r} is for BatchNorm networks; model family {family.name!r} has no BatchNorm"
        )
    full = family.full_sizes(config)
    if "rank" in space.dims:
        layer = model.base_model.get_submodule(family.layers)[0]
        present = family.layer_projections(layer)
        targets = [path for path in family.rank_targets(space.rank_targets) if path in present]
        full["rank"] = max(min(layer.get_submodule(path).weight.shape) for path in targets)
    bound = space.bind(full, lambda d, v: family.resolve(full, d, v), None)  # every check, before any change
    reader = check_pooling(model, pooling)
    check_head(model, head, bound.dims, reader)
    if check or (check is None and not family.verified):
        from .testing import quick_check

        quick_check(family, model, bound.dims)
    options = {"pooling": pooling} if pooling == "mean" else {}
    if head == "per_depth":
        options["head"] = head
    nested = NestedModel(model, bound, family, full, options)
    bound.set_cost(param_cost_fn(nested))
    return nested


class NestedModel(nn.Module):
    """An unmodified transformers model with sliceable layers; `use(subnet)` picks the sub-model that runs."""

    def __init__(
        self,
        model: nn.Module,
        space: NestingSpace,
        family: Family,
        full: Mapping[str, int],
        options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.options = dict(options or {})  # how the model was nested beyond its space: {"pooling": "mean"}
        self.space = space
        self.family = family
        self.full = dict(full)
        self.state = NestState(family.role_sizes(full, {}))
        self.metadata: dict[str, Any] = {}  # carried into the one-file checkpoint (run config, eval table)
        self._patched: list[tuple[nn.Module, str, str]] = []
        self._switch_cache: dict[Subnet | str, tuple[Subnet, dict[str, int]]] = {}
        reader = check_pooling(model, self.options.get("pooling"))
        heads = check_head(model, self.options.get("head"), space.dims, reader)
        if heads:  # before the wrappers, so that hidden slicing wraps every copy
            depths = space.absolute("depth")
            apply_heads(model, heads, self.state, depths, max(depths))
        self._inject()
        if reader:
            apply_pooling(model, reader)
        self._active = space.normalize(space.largest)

    # ---- injection ----------------------------------------------------------------------------
    def _inject(self) -> None:
        base = self.model.base_model
        parent_path, _, name = self.family.layers.rpartition(".")
        parent = base.get_submodule(parent_path) if parent_path else base
        layers = NestedLayerList(getattr(parent, name), self.state)
        setattr(parent, name, layers)
        full_roles = self.family.role_sizes(self.full, {})
        low_rank = (
            set(self.family.rank_targets(self.space.rank_targets)) if "rank" in self.space.dims else set()
        )
        absolute = bool(low_rank) and isinstance(self.space.values["rank"][0], int)
        for layer in layers.every_layer():
            for path, proj in self.family.layer_projections(layer).items():
                owner_path, _, attr = path.rpartition(".")
                owner = layer.get_submodule(owner_path) if owner_path else layer
                blocks, offset = [], 0
                for role in proj.out_roles:
                    blocks.append((offset, role))
                    offset += full_roles[role]
                base = getattr(owner, attr)
                if path in low_rank:
                    wrapped = LowRankLinear(
                        base, self.state, blocks, proj.in_role, self.full["rank"], absolute
                    )
                else:
                    wrapped = SlicedLinear(base, self.state, blocks, proj.in_role)
                setattr(owner, attr, wrapped)
            for path, role in self.family.layer_attrs.items():
                owner_path, _, attr = path.rpartition(".")
                self._patched.append((layer.get_submodule(owner_path), attr, role))
        if "hidden" in self.space.dims:
            self._inject_hidden()

    def _inject_hidden(self) -> None:
        """The residual width shrinks: embeddings, norms and every projection outside the layers follow it."""
        hidden, base = self.full["hidden"], self.model.base_model
        for path in self.family.hidden_outputs:
            _replace(base, path, SlicedOutput(base.get_submodule(path), self.state))
        for name, module in list(self.model.named_modules()):
            if _inside_wrapper(self.model, name):
                continue
            if isinstance(module, nn.Embedding) and module.embedding_dim == hidden:
                _replace(self.model, name, SlicedEmbedding(module, self.state))
            elif is_norm(module) and tuple(module.weight.shape) == (hidden,):
                _replace(self.model, name, SlicedNorm(module, self.state))
            elif isinstance(module, (nn.Linear, Conv1D)):
                out = module.weight.shape[1 if isinstance(module, Conv1D) else 0]
                role = "hidden" if out == hidden else FIXED
                _replace(self.model, name, SlicedLinear(module, self.state, [(0, role)], "hidden"))

    def unnest(self) -> nn.Module:
        """Remove the wrappers and give back the plain full model (like PEFT's merge_and_unload); with a head
        per depth, the largest depth's head."""
        self._refuse_pooled("unnest()")
        self.activate(self.space.largest)
        for name, module in list(self.model.named_modules()):
            if isinstance(module, LowRankLinear):  # fuse the factors back into one dense weight
                module.base_layer.weight = nn.Parameter(module.dense_weight().detach().clone())
            if isinstance(module, WRAPPERS):
                _replace(self.model, name, module.base_layer)
            elif isinstance(module, NestedLayerList):
                _replace(self.model, name, module.unnested())
        for name, module in list(self.model.named_modules()):  # per-depth heads: the full depth's stays
            if isinstance(module, DepthHeads):
                _replace(self.model, name, module.base_layer)
        return self.model

    # ---- switching ----------------------------------------------------------------------------
    @property
    def active(self) -> Subnet:
        return self._active

    def activate(self, subnet: Subnet | str) -> Subnet:
        """Make `subnet` the one that runs: sets a few ints, copies and allocates no weights."""
        cached = self._switch_cache.get(subnet)
        if cached is None:
            normal = self.space.normalize(Subnet.parse(subnet))
            cached = (normal, self.family.role_sizes(self.full, self.space.resolve(normal)))
            self._switch_cache[subnet] = cached
        self._active, roles = cached
        self.state.set(roles)
        for module, attr, role in self._patched:
            module.__dict__[attr] = roles[role]  # a plain int: skip nn.Module.__setattr__'s checks (hot path)
        return self._active

    @contextmanager
    def use(self, subnet: Subnet | str) -> Iterator[NestedModel]:
        previous = self._active
        self.activate(subnet)
        try:
            yield self
        finally:
            self.activate(previous)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    # ---- sizes --------------------------------------------------------------------------------
    def sizes(self, subnet: Subnet | str) -> dict[str, int]:
        """Absolute size of every dimension (full size where the space does not nest it)."""
        return {**self.full, **self.space.resolve(subnet)}

    def num_params(self, subnet: Subnet | str) -> int:
        return int(self.space.cost(subnet))

    # ---- export -------------------------------------------------------------------------------
    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's tensors under the original model's keys (no `base_layer`)."""
        return {original_key(k): v for k, v in self.model.state_dict().items()}

    # ---- low rank -----------------------------------------------------------------------------
    def low_rank_modules(self) -> dict[str, LowRankLinear]:
        """Factorised projections under their original-model names."""
        return {original_key(n): m for n, m in self.model.named_modules() if isinstance(m, LowRankLinear)}

    def low_rank_info(self) -> dict[str, dict[str, Any]]:
        """What the one-file checkpoint records of each factorised projection (its cut included)."""
        return {
            n: {"full_rank": m.full_rank, "cap": m.cap, "transposed": m.transposed}
            for n, m in self.low_rank_modules().items()
        }

    def apply_low_rank_info(self, info: Mapping[str, Mapping[str, Any]]) -> None:
        modules = self.low_rank_modules()
        for name, entry in info.items():
            modules[name].cap = int(entry["cap"])
        self.space.set_cost(param_cost_fn(self))

    def extract(self, subnet: Subnet | str) -> nn.Module:
        """A plain transformers model of the same class, with the subnet's config and cloned weights.
        Factorised projections are fused to dense weights (no transformers config expresses them)."""
        self._refuse_pooled("extract()")
        return self.extract_plain(subnet)

    def extract_plain(self, subnet: Subnet | str) -> nn.Module:
        """`extract()` without the pooling check: with pooling="mean" the model's own head reads [CLS] (for the
        exact form, see sortednet.sentence_export)."""
        source = self.base_state_dict()
        sizes = self.space.resolve(subnet)
        return build_submodel(
            type(self.model),
            self.model.config,
            self.family,
            self.full,
            sizes,
            lambda key, idx: source[key][idx].clone(memory_format=torch.contiguous_format),
            head_aliases(source, self.sizes(subnet)["depth"]),
            factorized=factorized_ranks(self.low_rank_info(), self.full, sizes, self.space),
        )

    def _refuse_pooled(self, what: str) -> None:
        if self.options.get("pooling") == "mean":
            raise ValueError(pooled_refusal(what, type(self.model).__name__))

    def draft(self, subnet: Subnet | str) -> nn.Module:
        """A plain transformers model of `subnet` whose weights are views of this model's (no copy), e.g. the
        draft for self-speculative decoding: `nested.generate(ids, assistant_model=nested.draft(sub))`."""
        from .draft import draft

        self._refuse_pooled("draft()")
        return draft(self, subnet)

    def header(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the one-file checkpoint's header records beside the tensors (`sortednet.checkpoint`)."""
        return {
            "model_class": hf.class_path(self.model),
            "config": self.model.config.to_dict(),
            "space": self.space.to_dict(),
            "family": self.family.to_dict(),
            "low_rank": self.low_rank_info(),
            "options": self.options,
            **self.metadata,
            **(metadata or {}),
        }

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
        """Write every sub-model into one safetensors file (see `sortednet.load`)."""
        write(path, self.base_state_dict(), self.header(metadata))


def _replace(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, attr, new)


def _inside_wrapper(root: nn.Module, path: str) -> bool:
    module = root
    for part in path.split(".")[:-1] if path else []:
        module = getattr(module, part)
        if isinstance(module, WRAPPERS):
            return True
    return False


def is_norm(module: nn.Module) -> bool:
    rms = type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
    return (isinstance(module, nn.LayerNorm) and module.weight is not None) or rms


def original_key(name: str) -> str:
    """A wrapped model's parameter or module name under the original model's (every `base_layer` dropped)."""
    return ".".join(part for part in name.split(".") if part != "base_layer")
