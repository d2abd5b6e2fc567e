"""Phi-3: one fused `qkv_proj` (q, k, v blocks) and one fused `gate_up_proj` (gate, up blocks).

Phi3Attention splits qkv at `config.num_attention_heads * head_dim` inside forward, a config value shared by
every layer, so a sub-model with fewer heads would read its keys from the wrong columns: heads are not
nested. Phi3Attention reads `head_dim` from the config when present, so writing it keeps hidden-size
sub-models exportable.
"""

from .base import Family, Projection

PHI3 = Family(
    name="phi3",
    model_types=("phi3",),
    layers="layers",
    projections={
        "self_attn.qkv_proj": Projection(("q", "kv", "kv"), "hidden"),
        "self_attn.o_proj": Projection(("hidden",), "q"),
        "mlp.gate_up_proj": Projection(("ffn", "ffn"), "hidden"),
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
    dims=("depth", "ffn", "hidden", "rank"),
    unsupported={"heads": "Phi3Attention splits qkv_proj at config.num_attention_heads inside forward"},
    verified=True,  # check_family passes in tests/test_family_check.py
)
