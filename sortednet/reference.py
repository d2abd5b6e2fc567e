"""Tiny random models, and the references that check_family compares sub-models against.

A reference is the plain transformers class built from the smaller config, its weights cut from the full
tiny model by this module's own rule: a prefix along every axis whose size changed, and in a fused projection
a prefix of each block. Nothing here calls Family.slices, Family.sub_config or build_submodel.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import transformers
from torch import nn
from transformers.models.auto import modeling_auto

from .families import Family

TINY = {"heads": 4, "kv_heads": 2, "head_dim": 8, "ffn": 48}  # hidden = heads x head_dim = 32
VOCAB = 64
IMAGE = {"image_size": 8, "patch_size": 2}


def default_model_class(config: Any) -> type:
    """Encoders (a masked-LM head exists): ForSequenceClassification; decoders: ForCausalLM; vision:
    ForImageClassification; otherwise the base model."""
    model_type = config.model_type
    if model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        order = ("SEQUENCE_CLASSIFICATION", "CAUSAL_LM")
    else:
        order = ("CAUSAL_LM", "SEQUENCE_CLASSIFICATION")
    for task in (*order, "IMAGE_CLASSIFICATION", ""):
        mapping = getattr(modeling_auto, f"MODEL_FOR_{task}_MAPPING_NAMES" if task else "MODEL_MAPPING_NAMES")
        name = mapping.get(model_type)
        if name:
            return getattr(transformers, name if isinstance(name, str) else name[0])
    raise ValueError(f"transformers has no model class for model type {model_type!r}; pass model_class=")


def tiny_config(
    config: Any, family: Family, depth: int, overrides: Mapping[str, Any]
) -> tuple[Any, dict[str, int]]:
    """The same config with `overrides` at tiny sizes (a fresh default config of its model type when the given
    one cannot be shrunk, e.g. rope factors tied to the head size), and the sizes it has."""
    kv_heads = TINY["kv_heads"] if "kv_heads" in family.config_keys else TINY["heads"]
    full = {**TINY, "depth": depth, "kv_heads": kv_heads, "hidden": TINY["heads"] * TINY["head_dim"]}
    try:
        tiny = _shrunk(config, family, full, overrides)
    except Exception:
        default = transformers.AutoConfig.for_model(config.model_type)
        tiny = _shrunk(default, family, full, overrides)
    read = family.full_sizes(tiny)
    if read != full:
        wrong = next(k for k in full if read[k] != full[k])
        raise ValueError(
            f"config_keys read {wrong}={read[wrong]} from a config written with {wrong}={full[wrong]}; "
            f"check config_keys[{wrong!r}]"
        )
    return tiny, full


def _shrunk(config: Any, family: Family, full: Mapping[str, int], overrides: Mapping[str, Any]) -> Any:
    data = {**config.to_dict(), **overrides}
    data.pop("quantization_config", None)
    hidden = data.get(family.config_keys["hidden"])
    for key, value in list(data.items()):  # other widths that follow the hidden size (DeBERTa's pooler)
        if ("hidden_size" in key or "embedding_size" in key) and value == hidden:
            data[key] = full["hidden"]
    for size, key in family.config_keys.items():
        if size in full and (size != "kv_heads" or key in data):
            data[key] = full[size]
    if family.head_dim_in_config:
        data[family.head_dim_key] = full["head_dim"]
    if "vocab_size" in data:
        data["vocab_size"] = VOCAB
        for key, value in list(data.items()):
            if key.endswith("_token_id"):
                data[key] = _token_below(value)
    for key, value in IMAGE.items():
        if key in data:
            data[key] = value
    if isinstance(data.get("layer_types"), list) and data["layer_types"]:
        types = data["layer_types"]
        data["layer_types"] = [types[i % len(types)] for i in range(full["depth"])]
    return type(config).from_dict(data)


def _token_below(value: Any) -> Any:
    if isinstance(value, list):
        return [_token_below(v) for v in value]
    return VOCAB - 1 if isinstance(value, int) and value >= VOCAB else value


def random_model(cls: type, config: Any, seed: int) -> nn.Module:
    """The class built from the config, every parameter redrawn so that outputs are O(1): matrices with
    std 1/sqrt(fan), vectors (norm weights, biases) moved off their init by 0.1 x N(0, 1)."""
    torch.manual_seed(seed)
    model = cls(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() >= 2:
                p.copy_(noise / math.sqrt(p[0].numel()))
            else:
                p.add_(0.1 * noise)
    return model


def tiny_inputs(model: nn.Module, config: Any, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = (2, config.num_channels, config.image_size, config.image_size)
        return {"pixel_values": torch.randn(size, generator=g)}
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # padding exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask}


def output(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    logits = getattr(out, "logits", None)
    return logits if logits is not None else out.last_hidden_state


def can_generate(cls: type) -> bool:
    return bool(getattr(cls, "can_generate", lambda: False)())


def greedy(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
        )


def expressible(family: Family, full: Mapping[str, int], sizes: Mapping[str, int]) -> bool:
    """Whether a plain model of the class has these sizes: a derived head size must stay the trained one."""
    return family.head_dim_in_config or sizes["hidden"] == sizes["heads"] * full["head_dim"]


def _widths(full: Mapping[str, int], sizes: Mapping[str, int]) -> dict[str, int]:
    kv_heads = sizes["heads"] * full["kv_heads"] // full["heads"]
    return {
        "q": sizes["heads"] * full["head_dim"],
        "kv": kv_heads * full["head_dim"],
        "ffn": sizes["ffn"],
        "hidden": sizes["hidden"],
    }


def _smaller_config(
    config: Any, family: Family, full: Mapping[str, int], sizes: Mapping[str, int], layers: list[int]
) -> Any:
    new = copy.deepcopy(config)
    kv_heads = sizes["heads"] * full["kv_heads"] // full["heads"]
    values = {**sizes, "kv_heads": kv_heads}
    for size, key in family.config_keys.items():
        if size in values and (size != "kv_heads" or getattr(config, key, None) is not None):
            setattr(new, key, values[size])
    if family.head_dim_in_config:
        setattr(new, family.head_dim_key, full["head_dim"])
    if isinstance(getattr(config, "layer_types", None), list):
        new.layer_types = [config.layer_types[i] for i in layers]
    return new


def every_other(depth: int, keep: int) -> list[int]:
    """The layers `depth_order=every_other` keeps at depth `keep` (its definition: 0, 2, 4, ... then 1, 3, ...)."""
    return sorted([*range(0, depth, 2), *range(1, depth, 2)][:keep])


def reference_model(
    cls: type,
    config: Any,
    family: Family,
    full: Mapping[str, int],
    sizes: Mapping[str, int],
    state: Mapping[str, torch.Tensor],
    layers: list[int] | None = None,
) -> nn.Module | None:
    """The plain model of a subnet's shape with the full model's weights cut to it; `layers`: the full model's
    layers it keeps (default: the first `depth`), its layer j being layer layers[j]. When the class cannot
    have that head count (its head size is derived), the heads are kept and the inputs that the dropped heads
    feed (the projections whose input role is `q`) are zeroed; None if the hidden size is cut as well."""
    heads_cut = not expressible(family, full, sizes)
    if heads_cut and sizes["hidden"] != full["hidden"]:
        return None
    layers = list(range(sizes["depth"])) if layers is None else layers
    shape = {**sizes, "heads": full["heads"]} if heads_cut else dict(sizes)
    model = cls(_smaller_config(config, family, full, shape, layers)).eval()
    fused = _fused_blocks(family, full, shape)
    layer = re.compile(rf"((?:^|\.){re.escape(family.layers)}\.)(\d+)\.")
    cut = {}
    for key, target in model.state_dict().items():
        source = layer.sub(lambda m: f"{m.group(1)}{layers[int(m.group(2))]}.", key, count=1)
        if source not in state:
            raise ValueError(f"the smaller model has {key!r}, which the full model lacks")
        cut[key] = _cut(state[source], tuple(target.shape), fused(key))
    model.load_state_dict(cut, strict=True)
    if heads_cut:
        _zero_dropped_heads(model, family, sizes["depth"], sizes["heads"] * full["head_dim"])
    return model


def _fused_blocks(family: Family, full: Mapping[str, int], sizes: Mapping[str, int]):
    """key -> (axis, [(full width, new width) per block]) for the tensors of fused projections, else None."""
    old, new = _widths(full, full), _widths(full, sizes)
    patterns = [
        (re.compile(rf"(^|\.){re.escape(family.layers)}\.\d+\.{re.escape(path)}\.(weight|bias)$"), proj)
        for path, proj in family.projections.items()
        if len(proj.out_roles) > 1
    ]

    def blocks(key: str) -> tuple[int, list[tuple[int, int]]] | None:
        for pattern, proj in patterns:
            match = pattern.search(key)
            if match:
                axis = proj.out_dim if match.group(2) == "weight" else 0
                return axis, [(old[role], new[role]) for role in proj.out_roles]
        return None

    return blocks


def _cut(tensor: torch.Tensor, shape: tuple[int, ...], fused: tuple[int, list[tuple[int, int]]] | None):
    if tensor.dim() != len(shape) or any(n > m for n, m in zip(shape, tensor.shape, strict=True)):
        raise ValueError(f"cannot cut a tensor of shape {tuple(tensor.shape)} to {shape}")
    index = [slice(0, n) for n in shape]
    if fused is None:
        return tensor[tuple(index)].clone()
    axis, blocks = fused
    parts, offset = [], 0
    for old, new in blocks:
        index[axis] = slice(offset, offset + new)
        parts.append(tensor[tuple(index)])
        offset += old
    return torch.cat(parts, dim=axis)


def _zero_dropped_heads(model: nn.Module, family: Family, depth: int, q_width: int) -> None:
    layers = model.base_model.get_submodule(family.layers)
    with torch.no_grad():
        for layer in list(layers)[:depth]:
            for path, proj in family.projections.items():
                if proj.in_role != "q" or (proj.optional and not _has(layer, path)):
                    continue
                weight = layer.get_submodule(path).weight
                weight.narrow(1 - proj.out_dim, q_width, weight.shape[1 - proj.out_dim] - q_width).zero_()


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def low_rank_reference(
    cls: type, config: Any, family: Family, state: Mapping[str, torch.Tensor], rank: int
) -> tuple[nn.Module, int]:
    """The full-size plain model with every projection replaced by its own best rank-r approximation (from
    an SVD), and the parameter count of the factorised model (each projection counts the smaller of its
    factors, r (out + in), and its dense weight)."""
    model = cls(config).eval()
    model.load_state_dict(dict(state), strict=True)
    count = model.num_parameters()
    layers = model.base_model.get_submodule(family.layers)
    with torch.no_grad():
        for layer in layers:
            for path, proj in family.projections.items():
                if proj.optional and not _has(layer, path):
                    continue
                weight = layer.get_submodule(path).weight
                dense = weight.t() if proj.out_dim == 1 else weight  # (out, in), as the rounding goes
                u, s, vh = torch.linalg.svd(dense, full_matrices=False)
                r = min(rank, s.numel())
                dense.copy_((u[:, :r] * s[:r]) @ vh[:r])
                rows, cols = weight.shape
                count += min(r * (rows + cols), rows * cols) - rows * cols
    return model, count
