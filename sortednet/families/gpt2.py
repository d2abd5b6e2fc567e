"""GPT-2: Conv1D projections (weights stored as (in, out)) and a fused q/k/v `c_attn`."""

from .base import Family, Projection

GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    layers="h",
    projections={
        "attn.c_attn": Projection(("q", "kv", "kv"), "hidden", out_dim=1),
        "attn.c_proj": Projection(("hidden",), "q", out_dim=1),
        "mlp.c_fc": Projection(("ffn",), "hidden", out_dim=1),
        "mlp.c_proj": Projection(("hidden",), "ffn", out_dim=1),
    },
    config_keys={"depth": "n_layer", "heads": "n_head", "ffn": "n_inner", "hidden": "n_embd"},
    head_dim_in_config=False,
    layer_attrs={"attn.split_size": "q"},  # GPT2Attention splits c_attn's output in blocks of split_size
    verified=True,  # check_family passes in tests/test_family_check.py
)
