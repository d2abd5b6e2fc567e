"""Small helpers around transformers: building a model without allocating or initialising its weights,
and naming its class so that it can be rebuilt from a checkpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import transformers
from torch import nn
from transformers.initialization import no_init_weights


@contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Parameters are created on the meta device; buffers (rotary tables, position ids) stay real."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def empty_model(cls: type, config: Any) -> nn.Module:
    with no_init_weights(), _parameters_on_meta():
        return cls(config)


def fill_model(
    model: nn.Module,
    read: Callable[[str, tuple[int, ...]], torch.Tensor],
    key_map: Callable[[str], str] = lambda key: key,
) -> nn.Module:
    """Give every parameter and persistent buffer of `model` the tensor `read(key_map(key), shape)` returns."""
    tensors = {key: read(key_map(key), tuple(t.shape)) for key, t in model.state_dict(keep_vars=True).items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    model.tie_weights()
    return model.eval()


def class_path(model: nn.Module) -> str:
    return type(model).__name__


def model_class(name: str) -> type:
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(
            f"model class {name!r} is not a transformers class; the checkpoint needs one of its own"
        )
    return cls


def config_from_dict(data: Mapping[str, Any]) -> Any:
    model_type = data.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise ValueError(f"config model_type {model_type!r} is not known to this transformers version")
    try:
        return transformers.CONFIG_MAPPING[model_type].from_dict(dict(data))
    except (TypeError, ValueError, KeyError, AttributeError) as err:  # configs are strict dataclasses
        line = " ".join(str(err).split())
        raise ValueError(f"the {model_type} config in the checkpoint is damaged: {line}") from None
