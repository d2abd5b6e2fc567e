"""bench/stitch_curve.py's arithmetic: Spearman's rho with ties, and the stitches outside their anchors."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from bench.stitch_curve import check, spearman


def test_spearman_is_scipys_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 8, 40).astype(float), rng.normal(size=40)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert spearman(np.arange(5.0), np.arange(5.0) ** 2) == pytest.approx(1.0)


def test_check_counts_the_stitches_outside_their_anchors():
    rows = [
        {"subnet": "s", "flops": 1, "accuracy": 0.80, "loss": 0.6},
        {"subnet": "s:2>l:2", "flops": 2, "accuracy": 0.85, "loss": 0.5},
        {"subnet": "s:1>l:1", "flops": 3, "accuracy": 0.99, "loss": 0.4},  # above the large anchor
        {"subnet": "l", "flops": 4, "accuracy": 0.90, "loss": 0.3},
    ]
    summary = check(rows, n_val=900)
    assert summary["outside"] == ["s:1>l:1"] and summary["stitches"] == 2
    assert summary["spearman_accuracy"] == pytest.approx(1.0) and summary[
        "spearman_neg_loss"
    ] == pytest.approx(1.0)
