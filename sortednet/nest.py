"""NestedModel: a transformers model with sliceable layers; `use(subnet)` picks the sub-model that runs.

The mechanism of the nested kinds. `nest_layers()` injects the wrappers of a layer family (BERT, GPT-2, LLaMA,
ViT, ...) into the unmodified model; sortednet.conv_nest does the same for stage families (ResNet, ConvNeXt,
Swin) on this class's skeleton. The public `sortednet.nest` (sortednet.api) looks the family up, runs the quick
check of an unverified family and dispatches to one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

try:  # the generate() keywords that hold a KV cache: `past_key_values` became `cache` in transformers 5.x
    from transformers.generation.utils import ALL_CACHE_NAMES
except ImportError:
    ALL_CACHE_NAMES = ["past_key_values"]

from . import depth_order, hf
from .checkpoint import damaged
from .cost import param_cost_fn
from .draft import draft
from .export import build_submodel, factorized_ranks
from .families import Family
from .heads import DepthHeads, check_head, head_aliases
from .heads import apply as apply_heads
from .layers import (
    FIXED,
    LayerList,
    LowRankLinear,
    NestState,
    SlicedEmbedding,
    SlicedLinear,
    SlicedNorm,
    SlicedOutput,
    inside,
    replace,
    unwrap,
)
from .many import ManyInOneModel
from .pooling import apply as apply_pooling
from .pooling import check_pooling, pooled_refusal
from .spec import NestingSpace, Subnet

KIND = "nested"  # the checkpoint header's `kind` of a nested layer family
SLICING = (SlicedLinear, SlicedNorm, SlicedEmbedding, SlicedOutput)  # wrappers that cut what they wrap


def nest_layers(
    model: nn.Module,
    space: NestingSpace,
    family: Family,
    *,
    pooling: str | None = None,
    head: str | None = None,
    bn: str | None = None,
    verify: Callable[[tuple[str, ...]], None] | None = None,
    ranking: Sequence[int] | None = None,
) -> NestedModel:
    """Nest a transformers model of a layer family; every value is checked, then `verify(dims)` runs (the quick
    check of an unverified family), then the model is changed. `ranking`: the layers in the order depth keeps
    them (sortednet.depth_order; default: what the space's `depth_order` gives without data)."""
    if bn is not None:
        raise ValueError(
            f"bn={bn!r} is for BatchNorm networks; model family {family.name!r} has no BatchNorm"
        )
    config = model.config
    full = family.full_sizes(config)
    if "rank" in space.dims:
        layer = model.base_model.get_submodule(family.layers)[0]
        present = family.layer_projections(layer)
        targets = [path for path in family.rank_targets(space.rank_targets) if path in present]
        full["rank"] = max(min(layer.get_submodule(path).weight.shape) for path in targets)
    bound = space.bind(full, lambda d, v: family.resolve(full, d, v), None)  # every check, before any change
    order = depth_order.ranking(space.depth_order if ranking is None else ranking, full["depth"])
    reader = check_pooling(model, pooling)
    check_head(model, head, bound.dims, reader)
    if verify is not None:
        verify(bound.dims)
    options: dict[str, Any] = {"pooling": pooling} if pooling == "mean" else {}
    if head == "per_depth":
        options["head"] = head
    nested = NestedModel(model, bound, family, full, options, order)
    bound.set_cost(param_cost_fn(nested))
    return nested


class NestedModel(ManyInOneModel):
    """An unmodified transformers model with sliceable layers; `use(subnet)` picks the sub-model that runs.

    The skeleton of both nested kinds: a subclass changes what is injected (`_inject`), what a switch sets
    (`_switch_plan`, `_switch`), what a sub-model's keys read (`aliases`) and what is stored beside the weights."""

    kind = KIND
    generates = True  # draft() makes sense: a language model's sub-model can be a speculative-decoding draft

    def __init__(
        self,
        model: nn.Module,
        space: NestingSpace,
        family: Any,
        full: Mapping[str, int],
        options: Mapping[str, Any] | None = None,
        ranking: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.options = dict(options or {})  # how the model was nested beyond its space: {"pooling": "mean"}
        self.space = space
        self.family = family
        self.full = dict(full)
        # the layers in the order depth keeps them (sortednet.depth_order): depth=k runs the first k, in sequence
        self.ranking: tuple[int, ...] = tuple(ranking) if ranking is not None else tuple(range(full["depth"]))
        self.state = NestState(self._full_roles())
        self._hooks: list[Any] = []  # handles of the hooks sortednet registered (unnest removes only these)
        self._switch_cache: dict[Any, tuple[Subnet, Any]] = {}
        self._renumbered = False  # a layer_idx is not its layer's own: a sub-model skipping layers is active
        self._layer_types: LayerTypes | None = None  # config.layer_types, answering per kept layer
        self._inject()
        self._active = self.activate(space.largest)

    def _full_roles(self) -> dict[str, int]:
        return self.family.role_sizes(self.full, {})

    # ---- injection ----------------------------------------------------------------------------
    def _inject(self) -> None:
        reader = check_pooling(self.model, self.options.get("pooling"))
        heads = check_head(self.model, self.options.get("head"), self.space.dims, reader)
        if heads:  # before the wrappers, so that hidden slicing wraps every copy
            depths = self.space.absolute("depth")
            apply_heads(self.model, heads, self.state, depths, max(depths))
        self._inject_layers()
        if reader:
            self._hooks.extend(apply_pooling(self.model, reader))

    def _inject_layers(self) -> None:
        base = self.model.base_model
        layers = LayerList(base.get_submodule(self.family.layers))
        replace(base, self.family.layers, layers)
        self.__dict__["_layers"] = layers  # not a submodule of this module: it lives in the model
        self._patched: list[tuple[nn.Module, str, str]] = []
        # modules that index the KV cache by their layer (attention's layer_idx): renumbered on a switch, so that a
        # sub-model that skips layers fills a cache of its own depth, as its exported model would
        self._indexed = [
            [m for m in layer.modules() if isinstance(m.__dict__.get("layer_idx"), int)]
            for layer in layers.every_layer()
        ]
        self._own_indexes = [(m, i) for i, modules in enumerate(self._indexed) for m in modules]
        types = getattr(self.model.config, "layer_types", None)
        self._layer_types = LayerTypes(types) if isinstance(types, list) else None
        if self._layer_types is not None:
            self.model.config.layer_types = self._layer_types
        full_roles = self.family.role_sizes(self.full, {})
        low_rank = (
            set(self.family.rank_targets(self.space.rank_targets)) if "rank" in self.space.dims else set()
        )
        absolute = bool(low_rank) and isinstance(self.space.values["rank"][0], int)
        for layer in layers.every_layer():
            for path, proj in self.family.layer_projections(layer).items():
                blocks, offset = [], 0
                for role in proj.out_roles:
                    blocks.append((offset, role))
                    offset += full_roles[role]
                base_layer = layer.get_submodule(path)
                if path in low_rank:
                    wrapped = LowRankLinear(
                        base_layer, self.state, blocks, proj.in_role, self.full["rank"], absolute
                    )
                else:
                    wrapped = SlicedLinear(base_layer, self.state, blocks, proj.in_role)
                replace(layer, path, wrapped)
            for path, role in self.family.layer_attrs.items():
                owner_path, _, attr = path.rpartition(".")
                self._patched.append((layer.get_submodule(owner_path), attr, role))
        if "hidden" in self.space.dims:
            self._inject_hidden()

    def _inject_hidden(self) -> None:
        """The residual width shrinks: embeddings, norms and every projection outside the layers follow it."""
        hidden, base = self.full["hidden"], self.model.base_model
        for path in self.family.hidden_outputs:
            replace(base, path, SlicedOutput(base.get_submodule(path), self.state))
        for name, module in list(self.model.named_modules()):
            if inside(self.model, name, SLICING):
                continue
            if isinstance(module, nn.Embedding) and module.embedding_dim == hidden:
                replace(self.model, name, SlicedEmbedding(module, self.state))
            elif is_norm(module) and tuple(module.weight.shape) == (hidden,):
                replace(self.model, name, SlicedNorm(module, self.state))
            elif isinstance(module, (nn.Linear, Conv1D)):
                out = module.weight.shape[1 if isinstance(module, Conv1D) else 0]
                role = "hidden" if out == hidden else FIXED
                replace(self.model, name, SlicedLinear(module, self.state, [(0, role)], "hidden"))

    def unnest(self) -> nn.Module:
        """Remove the wrappers and the hooks sortednet added and give back the plain full model (like PEFT's
        merge_and_unload); with a head per depth, the largest depth's head."""
        self._refuse_pooled("unnest()")
        self.activate(self.space.largest)
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        if self._layer_types is not None:
            self.model.config.layer_types = list(self._layer_types)
        return unwrap(self.model)

    # ---- switching ----------------------------------------------------------------------------
    def activate(self, subnet: Subnet | str) -> Subnet:
        """Make `subnet` the one that runs: sets a few ints and references, copies and allocates no weights."""
        cached = self._switch_cache.get(subnet)
        if cached is None:
            normal = self.space.normalize(Subnet.parse(subnet))
            cached = self._switch_cache[subnet] = (normal, self._switch_plan(normal))
        self._active, plan = cached
        self._switch(plan)
        return self._active

    def kept(self, subnet: Subnet | str) -> tuple[int, ...]:
        """The layers `subnet` runs, in their original sequence."""
        return depth_order.kept(self.ranking, self.sizes(subnet)["depth"])

    def _switch_plan(self, subnet: Subnet) -> Any:
        """What a switch to `subnet` sets (computed once per subnet): the role widths, the layers that run and
        the cache index of each."""
        roles = self.family.role_sizes(self.full, self.space.resolve(subnet))
        kept = self.kept(subnet)
        every = self._layers.every_layer()
        layers = None if len(kept) == len(every) else tuple(every[i] for i in kept)
        renumbered = [(m, j) for j, i in enumerate(kept) for m in self._indexed[i] if j != i]
        return roles, layers, self._own_indexes + renumbered if renumbered else [], kept

    def _switch(self, plan: Any) -> None:
        roles, layers, indexes, kept = plan
        self.state.set(roles)
        self._layers.active = layers
        if self._layer_types is not None:
            self._layer_types.kept = None if layers is None else kept
        for module, attr, role in self._patched:
            module.__dict__[attr] = roles[role]  # a plain int: skip nn.Module.__setattr__'s checks (hot path)
        if indexes or self._renumbered:
            for module, index in indexes or self._own_indexes:
                module.__dict__["layer_idx"] = index
        self._renumbered = bool(indexes)

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

    def layer_host(self) -> tuple[nn.Module, Any] | None:
        return self.model, self.family

    def summary(self) -> list[tuple[str, str]]:
        config = self.model.config
        sizes = ", ".join(f"{d}={v}" for d, v in self.full.items())
        dims = "  ".join(f"{d}={list(v)}" for d, v in self.space.values.items())
        return [
            ("base model", f"{type(self.model).__name__} ({config.model_type}): {sizes}"),
            ("nesting space", f"{dims}  ->  {len(self.space)} sub-models"),
        ]

    # ---- weights ------------------------------------------------------------------------------
    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's tensors under the original model's keys (no `base_layer`)."""
        return {original_key(k): v for k, v in self.model.state_dict().items()}

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
        if not info:
            return
        modules = self.low_rank_modules()
        for name, entry in info.items():
            if name not in modules:
                raise ValueError(f"low_rank: {name} is not a factorised projection of this model")
            modules[name].cap = int(entry["cap"])
        self.space.set_cost(param_cost_fn(self))

    def read_stats(self, get: Callable[[str], torch.Tensor], meta: Mapping[str, Any], keys: Any) -> None:
        """Read what the kind stores beside the weights from a checkpoint (`get(key)` reads a tensor)."""

    # ---- export -------------------------------------------------------------------------------
    def aliases(self, subnet: Subnet, keys: Iterable[str]) -> dict[str, str]:
        """Plain sub-model key -> stored key where they differ (a head per depth: this depth's copy)."""
        return head_aliases(keys, self.sizes(subnet)["depth"])

    def extract(self, subnet: Subnet | str) -> nn.Module:
        """A plain transformers model of the same class, with the subnet's config and cloned weights.
        Factorised projections are fused to dense weights (no transformers config expresses them)."""
        self._refuse_pooled("extract()")
        return self.extract_plain(subnet)

    def extract_plain(self, subnet: Subnet | str) -> nn.Module:
        """`extract()` without the pooling check: with pooling="mean" the model's own head reads [CLS] (for the
        exact form, see sortednet.sentence_export)."""
        normal = self.space.normalize(Subnet.parse(subnet))
        source = self.tensors()
        sizes = self.space.resolve(normal)
        return build_submodel(
            type(self.model),
            self.model.config,
            self.family,
            self.full,
            sizes,
            lambda key, idx: source[key][idx].clone(memory_format=torch.contiguous_format),
            self.aliases(normal, source),
            factorized=factorized_ranks(self.low_rank_info(), self.full, sizes, self.space),
            kept=self.kept(normal),
        )

    def _refuse_pooled(self, what: str) -> None:
        if self.options.get("pooling") == "mean":
            raise ValueError(pooled_refusal(what, type(self.model).__name__))

    def draft(self, subnet: Subnet | str) -> nn.Module:
        """A plain transformers model of `subnet` whose weights are views of this model's (no copy), e.g. the
        draft for self-speculative decoding: `nested.generate(ids, assistant_model=nested.draft(sub))`."""
        if not self.generates:
            raise ValueError(
                f"draft() is for language models; model family {self.family.name!r} does not generate"
            )
        self._refuse_pooled("draft()")
        subnet = self.space.normalize(Subnet.parse(subnet))
        return draft(
            type(self.model),
            self.model.config,
            self.family,
            self.full,
            self.space.resolve(subnet),
            self.base_state_dict(),
            str(subnet),
            factorised=bool(self.low_rank_modules()),
            kept=self.kept(subnet),
        )

    def _depth_order_record(self) -> dict[str, Any]:
        return depth_order_record(self.space, self.ranking)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The model's own `generate`; for a sub-model that skips layers, with a KV cache of its own depth (its
        layers' attention types, as its exported model would have)."""
        kept = self.kept(self._active)
        skips = kept != tuple(range(len(kept)))
        name = "cache" if "cache" in ALL_CACHE_NAMES else "past_key_values"  # transformers renamed it in 5.x
        if (
            skips
            and not any(kwargs.get(n) is not None for n in ALL_CACHE_NAMES)
            and kwargs.get("use_cache", True)
        ):
            from transformers import DynamicCache

            sizes = self.space.resolve(self._active)
            sub = self.family.sub_config(self.model.config, self.full, sizes, kept)
            kwargs[name] = DynamicCache(config=sub)
        return self.model.generate(*args, **kwargs)

    def header(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the one-file checkpoint's header records beside the tensors (`sortednet.checkpoint`)."""
        return {
            "kind": self.kind,
            "model_class": hf.class_path(self.model),
            "config": self.model.config.to_dict(),
            "space": self.space.to_dict(),
            "family": self.family.to_dict(),
            "low_rank": self.low_rank_info(),
            "options": self.options,
            **self._depth_order_record(),
            **self.metadata,
            **(metadata or {}),
        }


# what a nested checkpoint's header must hold: field -> the types it may have
HEADER_FIELDS: dict[str, tuple[type, ...]] = {
    "model_class": (str,),
    "config": (dict,),
    "space": (dict,),
    "aliases": (dict,),
    "low_rank": (dict,),
}
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "eval_table": (list,),
    "train_config": (dict,),
    "global_step": (int,),
    "options": (dict,),
    "nonfinite": (list,),
    "huge": (list,),
    "family": (dict,),
    "permutation": (dict,),
    "block_influence": (dict,),
}


def check_header(path: Path, meta: Mapping[str, Any]) -> None:
    """The fields a nested checkpoint needs, each of the right type (one line naming the first that is not)."""
    for fields, required in ((HEADER_FIELDS, True), (OPTIONAL_FIELDS, False)):
        for name, types in fields.items():
            if name not in meta and not required:
                continue
            if not isinstance(meta.get(name), types) or (
                name == "global_step" and isinstance(meta[name], bool)
            ):
                allowed = " or ".join(t.__name__ for t in types)
                found = type(meta.get(name)).__name__ if name in meta else "missing"
                raise damaged(path, f"field {name!r} is {found}, expected {allowed}")
    if not isinstance(meta["config"].get("model_type"), str):
        raise damaged(path, "config has no model_type")
    try:
        NestingSpace.from_dict(meta["space"])
    except (ValueError, TypeError) as err:
        raise damaged(path, f"space: {err}") from None


class LayerTypes(list):
    """`config.layer_types` of a nested model. HF models pick a layer's attention mask by its place in the loop
    (`causal_mask_mapping[config.layer_types[i]]`), so while a sub-model that skips layers is active, entry i
    answers for its i-th kept layer. Iteration, `len` and JSON see the model's own list."""

    kept: tuple[int, ...] | None = None

    def __getitem__(self, index):  # type: ignore[override]
        kept = self.kept
        if kept is None or isinstance(index, slice):
            return super().__getitem__(index)
        return super().__getitem__(kept[index])


def depth_order_record(space: NestingSpace, ranking: Sequence[int]) -> dict[str, Any]:
    """What the header records of the depth order: nothing for the first-k prefix."""
    if depth_order.is_prefix(tuple(ranking)):
        return {}
    order = space.depth_order
    return {"depth_order": {"method": order if isinstance(order, str) else "given", "ranking": list(ranking)}}


def is_norm(module: nn.Module) -> bool:
    rms = type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")
    return (isinstance(module, nn.LayerNorm) and module.weight is not None) or rms


def original_key(name: str) -> str:
    """A wrapped model's parameter or module name under the original model's (every `base_layer` dropped)."""
    return ".".join(part for part in name.split(".") if part != "base_layer")


def depth_heads(model: nn.Module) -> list[DepthHeads]:
    return [m for m in model.modules() if isinstance(m, DepthHeads)]
