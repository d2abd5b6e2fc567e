"""Qwen3: LLaMA's layout plus per-head RMSNorms on queries and keys (`q_norm`, `k_norm`, over the head size,
which nesting never changes), and `head_dim` in the config."""

from dataclasses import replace

from .llama import LLAMA

QWEN3 = replace(LLAMA, name="qwen3", model_types=("qwen3",))
