"""The exact export of a mean-pooled classifier (nest(..., pooling="mean")).

No transformers class pools by mean before a BERT-style head, so a sub-model is written in the form its
checkpoint family (sentence-transformers) uses: the encoder as a plain transformers model at the folder's root
(`AutoModel.from_pretrained(folder)` loads it without sortednet), a mean-pooling module, and the head's linear
layers as Dense modules; `SentenceTransformer(folder).encode(texts)` gives the sub-model's logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from .pooling import first_token_reader

ACTIVATIONS = {nn.Tanh: "torch.nn.modules.activation.Tanh", nn.Identity: "torch.nn.modules.linear.Identity"}


def head_layers(model: nn.Module) -> list[tuple[nn.Linear, str]]:
    """The linear layers after pooling and their activations: BERT's pooler (dense, tanh) then its classifier;
    RoBERTa's classification head (dense, tanh, out_proj). Dropout is off at inference."""
    path = first_token_reader(model)
    reader = model.get_submodule(path) if path else None
    if reader is None or not isinstance(getattr(reader, "dense", None), nn.Linear):
        raise ValueError(
            f"no pooled head with a dense layer in {type(model).__name__}; cannot write its exact form"
        )
    layers = [(reader.dense, ACTIVATIONS[nn.Tanh])]
    if isinstance(getattr(reader, "out_proj", None), nn.Linear):
        layers.append((reader.out_proj, ACTIVATIONS[nn.Identity]))
    elif path.endswith("pooler") and isinstance(getattr(model, "classifier", None), nn.Linear):
        layers.append((model.classifier, ACTIVATIONS[nn.Identity]))
    return layers


def write(model: nn.Module, folder: str | Path, max_seq_length: int, tokenizer: Any = None) -> None:
    """Write `model` (a plain sub-model whose head reads [CLS]) as encoder + mean pooling + its head."""
    folder = Path(folder)
    encoder = model.base_model
    encoder.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    width = encoder.config.hidden_size
    modules = [_module(0, "", "Transformer"), _module(1, "1_Pooling", "Pooling")]
    _json(
        folder / "sentence_bert_config.json", {"max_seq_length": int(max_seq_length), "do_lower_case": False}
    )
    _json(
        folder / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": width,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    for i, (linear, activation) in enumerate(head_layers(model), start=2):
        sub = f"{i}_Dense"
        modules.append(_module(i, sub, "Dense"))
        _json(
            folder / sub / "config.json",
            {
                "in_features": linear.in_features,
                "out_features": linear.out_features,
                "bias": linear.bias is not None,
                "activation_function": activation,
            },
        )
        tensors = {"linear.weight": linear.weight.detach().contiguous()}
        if linear.bias is not None:
            tensors["linear.bias"] = linear.bias.detach().contiguous()
        save_file(tensors, str(folder / sub / "model.safetensors"))
    _json(folder / "modules.json", modules)


def _module(idx: int, path: str, kind: str) -> dict[str, Any]:
    return {"idx": idx, "name": str(idx), "path": path, "type": f"sentence_transformers.models.{kind}"}


def _json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
