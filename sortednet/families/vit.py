"""ViT and DeiT image classifiers (transformers 5 layout: `layers.N.attention.q_proj`, `mlp.fc1`)."""

from .base import Family, Projection

VIT = Family(
    name="vit",
    model_types=("vit", "deit"),
    layers="layers",
    projections={
        "attention.q_proj": Projection(("q",), "hidden"),
        "attention.k_proj": Projection(("kv",), "hidden"),
        "attention.v_proj": Projection(("kv",), "hidden"),
        "attention.o_proj": Projection(("hidden",), "q"),
        "mlp.fc1": Projection(("ffn",), "hidden"),
        "mlp.fc2": Projection(("hidden",), "ffn"),
    },
    config_keys={
        "depth": "num_hidden_layers",
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
        "hidden": "hidden_size",
    },
    head_dim_in_config=True,
    hidden_outputs=("embeddings",),  # cls token + patch projection + position embeddings, per feature
    verified=True,  # check_family passes in tests/test_family_check.py
)
