"""LLaMA, Qwen2 and Mistral: grouped-query attention (kv heads shrink with query heads), gated FFN."""

from .base import Family, Projection

LLAMA = Family(
    name="llama",
    model_types=("llama", "qwen2", "mistral"),
    layers="layers",
    projections={
        "self_attn.q_proj": Projection(("q",), "hidden"),
        "self_attn.k_proj": Projection(("kv",), "hidden"),
        "self_attn.v_proj": Projection(("kv",), "hidden"),
        "self_attn.o_proj": Projection(("hidden",), "q"),
        "mlp.gate_proj": Projection(("ffn",), "hidden"),
        "mlp.up_proj": Projection(("ffn",), "hidden"),
        "mlp.down_proj": Projection(("hidden",), "ffn"),
    },
    config_keys={
        "depth": "num_hidden_layers",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "hidden": "hidden_size",
    },
    head_dim_in_config=True,
    verified=True,  # check_family passes in tests/test_family_check.py
)
