"""Gemma, Gemma 2 and Gemma 3 (text): grouped-query attention with `head_dim` in the config, gated FFN,
sandwich norms, sliding-window layers (`layer_types`, cut to the depth on export), logit soft-capping.

Not `hidden`: the token embeddings are multiplied by sqrt(config.hidden_size), a constant of the full
model, and Gemma's RMSNorm scales by (1 + weight).
"""

from .base import Family, Projection

GEMMA = Family(
    name="gemma",
    model_types=("gemma", "gemma2", "gemma3_text"),
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
    dims=("depth", "heads", "ffn", "rank"),
    unsupported={"hidden": "its embeddings are scaled by sqrt(config.hidden_size) of the full model"},
    verified=True,  # check_family passes in tests/test_family_check.py
)
