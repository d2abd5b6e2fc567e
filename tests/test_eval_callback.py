"""The evaluation callback: per-subnet metrics through the Lightning logger at each validation, its config
checked before training (one line, no run folder)."""

from __future__ import annotations

import csv

import pytest
from hydra import compose, initialize_config_dir

from sortednet.cli.train import CONF_DIR, run

QUICK = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "callbacks.progress=null",
    "eval_table.enabled=false",
]


def compose_train(tmp_path, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={tmp_path}/run", *QUICK, *overrides])


def test_callback_logs_every_listed_subnet_at_each_validation(tmp_path):
    subnets = '["depth=2,heads=2,ffn=0.25","depth=4,heads=4,ffn=0.5"]'
    run(
        compose_train(
            tmp_path, "logger=csv", f"callbacks.eval.subnets={subnets}", "callbacks.eval.flops=true"
        )
    )
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("eval/accuracy/depth=2,heads=2,ffn=0.25")]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for key in ("eval/accuracy/depth=4,heads=4,ffn=0.5", "eval/loss/depth=2,heads=2,ffn=0.25"):
        assert all(float(r[key]) >= 0 for r in rows)
    assert float(rows[0]["eval/flops/depth=2,heads=2,ffn=0.25"]) < float(
        rows[0]["eval/flops/depth=4,heads=4,ffn=0.5"]
    )
    header = rows[0].keys()
    assert not any("depth=6" in k and k.startswith("eval/") for k in header)


def test_default_callback_logs_a_stratified_six(tmp_path):
    run(compose_train(tmp_path, "logger=csv", "trainer.max_steps=2"))
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        header = next(csv.reader(f))
    evaluated = {k.split("/", 2)[2] for k in header if k.startswith("eval/accuracy/")}
    assert len(evaluated) == 6 and {"depth=2,heads=2,ffn=0.25", "depth=6,heads=4,ffn=1.0"} <= evaluated


@pytest.mark.parametrize(
    "override, message",
    [
        (
            'callbacks.eval.subnets=["depth=3"]',
            "callbacks.eval.subnets: subnet depth=3 is not in the nesting space",
        ),
        ("callbacks.eval.subnets=0", "callbacks.eval.subnets=0 is below 1"),
        ("callbacks.eval.every_n_val=0", "callbacks.eval.every_n_val=0 is below 1"),
    ],
)
def test_bad_callback_config_is_refused_before_training(override, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(compose_train(tmp_path, override))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sortednet-train: error: ") and "\n" not in err and message in err
    assert not (tmp_path / "run").exists()
