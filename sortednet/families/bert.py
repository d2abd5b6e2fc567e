"""BERT, RoBERTa, XLM-RoBERTa and MiniLM (model_type "bert"): encoder layers under `encoder.layer`."""

from .base import Family, Projection

BERT = Family(
    name="bert",
    model_types=("bert", "roberta", "xlm-roberta"),
    layers="encoder.layer",
    projections={
        "attention.self.query": Projection(("q",), "hidden"),
        "attention.self.key": Projection(("kv",), "hidden"),
        "attention.self.value": Projection(("kv",), "hidden"),
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
    verified=True,  # check_family passes in tests/test_family_check.py
)
