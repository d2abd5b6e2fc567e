"""DeBERTa-v2 / v3: disentangled attention over shared relative position embeddings.

Each attention keeps its head count as an attribute (`num_attention_heads`, set on a switch). Fewer-heads
sub-models run but do not export, as for BERT: the attention output projection of a plain DeBERTa takes
hidden_size inputs, whatever the head count. The relative position projections (`pos_key_proj`,
`pos_query_proj`) exist only when `share_att_key` is false.
Not `hidden`: the encoder reads `rel_embeddings.weight` directly, at full width.
"""

from .base import Family, Projection

DEBERTA_V2 = Family(
    name="deberta-v2",
    model_types=("deberta-v2",),
    layers="encoder.layer",
    projections={
        "attention.self.query_proj": Projection(("q",), "hidden"),
        "attention.self.key_proj": Projection(("kv",), "hidden"),
        "attention.self.value_proj": Projection(("kv",), "hidden"),
        "attention.self.pos_key_proj": Projection(("kv",), "hidden", optional=True),
        "attention.self.pos_query_proj": Projection(("q",), "hidden", optional=True),
        "attention.output.dense": Projection(("hidden",), "q"),
        "intermediate.dense": Projection(("ffn",), "hidden"),
        "output.dense": Projection(("hidden",), "ffn"),
    },
    config_keys={
        "depth": "num_hidden_layers",
        "heads": "num_attention_heads",
        "ffn": "intermediate_size",
        "hidden": "hidden_size",
    },
    head_dim_in_config=False,
    dims=("depth", "heads", "ffn", "rank"),
    layer_attrs={"attention.self.num_attention_heads": "heads"},
    unsupported={"hidden": "its encoder reads rel_embeddings.weight at full width"},
    verified=True,  # check_family passes in tests/test_family_check.py
)
