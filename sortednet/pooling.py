"""Mean pooling for encoders whose head reads the first token ([CLS]).

A sentence encoder such as all-MiniLM-L6-v2 was trained with mean pooling: its first token's state carries
little about the input in the lower layers, so a shallow sub-model that classifies from [CLS] starts blind.
`MeanPooling` wraps the model's own first-token reader (BERT's pooler, RoBERTa's classification head) and gives it
the masked mean of the last hidden states as its "first token": the head's weights and code are unchanged.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from .layers import Wrapper

POOLINGS = ("cls", "mean")
READER_SUFFIXES = ("Pooler", "ClassificationHead")


class MeanPooling(Wrapper):
    """Calls `base_layer` on the masked mean of the sequence instead of the sequence (whose position 0 it reads).
    The attention mask of the current forward is set by a hook on the model (see `apply`)."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.mask: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.base_layer(masked_mean(hidden_states, self.mask).unsqueeze(1), *args, **kwargs)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the tokens the attention mask keeps (all of them without a 2-D mask), as sentence-transformers'
    mean pooling computes it."""
    if mask is None or mask.dim() != 2 or tuple(mask.shape) != tuple(hidden.shape[:2]):
        return hidden.mean(1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


def first_token_reader(model: nn.Module) -> str | None:
    """Path of the module that reads the first token of the last hidden states, or None."""
    for name, module in model.named_modules():
        if type(module).__name__.endswith(READER_SUFFIXES):
            return name
    return None


def check_pooling(model: nn.Module, pooling: str | None) -> str | None:
    """The path to wrap for `pooling` (None: the model's own head); one-line ValueError if it cannot apply."""
    if pooling in (None, "cls"):
        return None
    if pooling not in POOLINGS:
        raise ValueError(f"model.pooling={pooling!r} is unknown; allowed: {', '.join(POOLINGS)} (or null)")
    path = first_token_reader(model)
    if path is None:
        raise ValueError(
            f"model.pooling='mean' needs a head that reads the first token (a module named *Pooler or "
            f"*ClassificationHead); {type(model).__name__} has none"
        )
    return path


def apply(model: nn.Module, path: str) -> list[Any]:
    """Wrap the first-token reader at `path` and feed it the attention mask of every forward; returns the
    handles of the two hooks that do it."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    pooling = MeanPooling(getattr(parent, attr))
    setattr(parent, attr, pooling)
    encoder = model.base_model
    signature = inspect.signature(encoder.forward)

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind_partial(*args, **kwargs).arguments
        pooling.mask = bound.get("attention_mask")

    def release(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        pooling.mask = None

    # every forward of the encoder sets the mask (None without one); RoBERTa's head runs after the encoder
    # returns, so the mask is dropped only when the whole model returns
    return [
        encoder.register_forward_pre_hook(capture, with_kwargs=True),
        model.register_forward_hook(release, with_kwargs=True),
    ]


def pooled_refusal(what: str, class_name: str) -> str:
    return (
        f"{what}: this model pools by mean (pooling='mean') and a plain {class_name} reads the first token, so no "
        "plain transformers model gives its outputs; sortednet-export (sortednet.sentence_export.write) writes the "
        "exact form: the encoder as a plain transformers model with mean pooling and the head as "
        "sentence-transformers modules"
    )
