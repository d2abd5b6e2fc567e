"""Which models can be stitched, and where their parts live: embeddings, block list, and the rest (head)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..families import family_for


@dataclass(frozen=True)
class AnchorKind:
    """A family of stitchable architectures: where the embeddings are (the stitched model starts in the front
    anchor's), and which config values every anchor must share for a stitch to be one well-defined model."""

    name: str
    model_types: tuple[str, ...]
    embeddings: str  # module path under `base_model`
    shared: tuple[str, ...]  # config values that must be equal across anchors


KINDS = (
    AnchorKind(
        "vit",
        ("vit", "deit"),
        "embeddings",
        ("image_size", "patch_size", "num_channels", "num_labels", "id2label"),
    ),
    # the back anchor's rotary embedding and causal mask serve every block: same head size, rope and attention
    AnchorKind(
        "decoder",
        ("llama", "qwen2", "mistral"),
        "embed_tokens",
        ("vocab_size", "head_dim", "rope_parameters", "rope_theta", "_attn_implementation"),
    ),
)
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def kind_of(model_type: str) -> AnchorKind | None:
    return next((k for k in KINDS if model_type in k.model_types), None)


def allowed_types() -> str:
    return ", ".join(t for k in KINDS for t in k.model_types)


def _value(config: Any, key: str) -> Any:
    if key == "head_dim":
        head_dim = getattr(config, "head_dim", None)
        return head_dim or config.hidden_size // config.num_attention_heads
    value = getattr(config, key, None)
    return {str(k): v for k, v in value.items()} if key == "id2label" and value else value


def check_anchors(models: Sequence[nn.Module], names: Sequence[str]) -> AnchorKind:
    """Refuse, in one line naming the field, the value and what is allowed, anchors that cannot be stitched."""
    if len(models) < 2:
        raise ValueError(f"anchors: {len(models)} given; allowed: two or more models of one family")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and NAME.match(n) for n in names):
        raise ValueError(
            f"anchor names {list(names)} are not allowed; allowed: distinct names of letters, digits, _ and -"
        )
    for name, model in zip(names, models, strict=True):
        if getattr(model, "config", None) is None or not hasattr(model, "base_model"):
            raise ValueError(f"anchor {name!r} is a {type(model).__name__}; allowed: transformers models")
    first = models[0]
    kind = kind_of(first.config.model_type)
    if kind is None:
        raise ValueError(
            f"anchor {names[0]!r}: model_type={first.config.model_type!r} cannot be stitched; allowed: {allowed_types()}"
        )
    for name, model in zip(names[1:], models[1:], strict=True):
        if type(model) is not type(first):
            raise ValueError(
                f"anchor {name!r} is a {type(model).__name__}, anchor {names[0]!r} a {type(first).__name__}; "
                "allowed: anchors of one class (one family, one head)"
            )
        for key in kind.shared:
            mine, theirs = _value(model.config, key), _value(first.config, key)
            if mine != theirs:
                raise ValueError(
                    f"anchor {name!r}: {key}={mine!r} differs from anchor {names[0]!r}'s {theirs!r}; allowed: "
                    f"anchors sharing {key} (a stitch runs one anchor's input and another's output)"
                )
    for name, model in zip(names, models, strict=True):
        depth = len(layer_list(model))
        if depth < 2:
            raise ValueError(
                f"anchor {name!r}: num_hidden_layers={depth}; allowed: >= 2 (a stitch cuts between two blocks)"
            )
        if getattr(model.config, "use_cache", False) and kind.name == "decoder":
            model.config.use_cache = (
                False  # a stitch's blocks come from two models: one KV cache cannot hold them
            )
    return kind


def layer_list(model: nn.Module) -> nn.ModuleList:
    return model.base_model.get_submodule(family_for(model.config).layers)


def embeddings_of(model: nn.Module, kind: AnchorKind) -> nn.Module:
    return model.base_model.get_submodule(kind.embeddings)


@dataclass(frozen=True)
class AnchorParts:
    """Exact parameter counts of an anchor's parts (each tensor once, tied ones included where they are used)."""

    embeddings: int
    blocks: tuple[int, ...]
    head: int  # everything outside the embeddings and the blocks: final norm, classifier / LM head
    tied: int  # of `head`, what is also an embedding tensor (an LM head tied to the input embeddings)

    @property
    def total(self) -> int:
        return self.embeddings + sum(self.blocks) + self.head - self.tied


def parts_of(model: nn.Module, kind: AnchorKind) -> AnchorParts:
    emb_module, layers = embeddings_of(model, kind), layer_list(model)
    inside = {id(m) for m in emb_module.modules()} | {id(m) for m in layers.modules()}
    emb = {id(p): p.numel() for p in emb_module.parameters()}
    head: dict[int, int] = {}
    for module in model.modules():
        if id(module) not in inside:
            head.update({id(p): p.numel() for p in module.parameters(recurse=False)})
    blocks = tuple(sum(p.numel() for p in layer.parameters()) for layer in layers)
    tied = sum(n for i, n in head.items() if i in emb)
    return AnchorParts(sum(emb.values()), blocks, sum(head.values()), tied)


def widths(models: Mapping[str, nn.Module]) -> dict[str, int]:
    return {n: int(m.config.hidden_size) for n, m in models.items()}
