"""DistilBERT: encoder blocks under `transformer.layer`, `q_lin/k_lin/v_lin/out_lin`, `ffn.lin1/lin2`.

The head size is derived (dim / n_heads), so, as for BERT, fewer-heads sub-models run but do not export.
"""

from .base import Family, Projection

DISTILBERT = Family(
    name="distilbert",
    model_types=("distilbert",),
    layers="transformer.layer",
    projections={
        "attention.q_lin": Projection(("q",), "hidden"),
        "attention.k_lin": Projection(("kv",), "hidden"),
        "attention.v_lin": Projection(("kv",), "hidden"),
        "attention.out_lin": Projection(("hidden",), "q"),
        "ffn.lin1": Projection(("ffn",), "hidden"),
        "ffn.lin2": Projection(("hidden",), "ffn"),
    },
    config_keys={"depth": "n_layers", "heads": "n_heads", "ffn": "hidden_dim", "hidden": "dim"},
    head_dim_in_config=False,
    verified=True,  # check_family passes in tests/test_family_check.py
)
