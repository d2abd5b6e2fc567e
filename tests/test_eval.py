"""sortednet-eval and its parts: FLOPs by FlopCounterMode, latency, stratified choice, Pareto, the table in
the checkpoint, and the Hydra app (outputs, run's own data config, one-line refusals that write nothing)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors import safe_open
from tiny import digits_vit
from torch.utils.flop_counter import FlopCounterMode

import sortednet as sn
from sortednet.checkpoint import update_metadata
from sortednet.cli.eval import CONF_DIR, evaluate_checkpoint, run
from sortednet.evaluate import evaluate, evaluate_subnets, headline_metric
from sortednet.measure import (
    _EXTRA_FORMULAS,
    count_flops,
    measure_latency,
    one_sample,
    pick_subnets,
    stratified_subnets,
)
from sortednet.report import pareto_front, plot_pareto
from sortednet.tasks import task_for

DIGITS = {
    "_target_": "sortednet.data.ImageClassificationDataModule",
    "dataset": "digits",
    "batch_size": 64,
    "val_fraction": 0.2,
    "seed": 0,
}


def tiny_vit() -> torch.nn.Module:
    return digits_vit(layers=4, ffn=48).eval()


SPACE = {"depth": [2, 4], "heads": [2, 4], "ffn": [0.5, 1.0]}


def make_checkpoint(path, with_table: bool = False, data: dict | None = DIGITS) -> sn.NestedModel:
    """A tiny nested ViT checkpoint whose train_config names the digits data (as sortednet-train does)."""
    nested = sn.nest(tiny_vit(), SPACE)
    meta = {"train_config": {"name": "tiny_vit", "seed": 0, "data": data}} if data else {}
    if with_table:
        meta["eval_table"] = [
            {"subnet": str(s), "params": nested.num_params(s), "loss": 1.0, "accuracy": 0.1 + 0.01 * i}
            for i, s in enumerate(nested.space.subnets())
        ]
    nested.save(path, metadata=meta)
    return nested


QUICK = ["latency.warmup=1", "latency.repeats=2", "max_batches=1", "progress=false"]


# ---- measure -----------------------------------------------------------------------------------------
def test_flops_are_counted_and_fall_with_the_subnet():
    nested = sn.nest(tiny_vit(), SPACE)
    sample = {"pixel_values": torch.randn(1, 1, 8, 8)}
    flops = {str(s): count_flops(nested, s, sample) for s in nested.space.subnets()}
    assert (
        flops["depth=2,heads=2,ffn=0.5"] < flops["depth=2,heads=4,ffn=0.5"] < flops["depth=4,heads=4,ffn=1.0"]
    )
    # the slices really cost less: a sub-model nested counts what its plain extracted model counts
    for spec in ("depth=2,heads=2,ffn=0.5", "depth=4,heads=4,ffn=1.0"):
        plain = nested.extract(spec)
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            plain(**sample)
        assert flops[spec] == counter.get_total_flops()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            plain(**sample)
        assert flops[spec] > counter.get_total_flops()  # PyTorch's own table misses CPU attention


def test_one_sample_trims_padding_and_latency_is_positive():
    batch = {
        "input_ids": torch.ones(3, 6, dtype=torch.long),
        "attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0]] * 3),
        "labels": torch.zeros(3, dtype=torch.long),
    }
    sample = one_sample(batch)
    assert set(sample) == {"input_ids", "attention_mask"} and sample["input_ids"].shape == (1, 3)
    nested = sn.nest(tiny_vit(), SPACE)
    ms = measure_latency(nested, "depth=2,heads=2,ffn=0.5", {"pixel_values": torch.randn(4, 1, 8, 8)}, 1, 3)
    assert 0 < ms < 10_000


def test_stratified_sample_spans_the_costs():
    space = sn.nest(
        tiny_vit(), {"depth": [1, 2, 3, 4], "heads": [1, 2, 4], "ffn": [0.25, 0.5, 0.75, 1.0]}
    ).space
    picked = stratified_subnets(space, 7, seed=3)
    ordered = space.subnets()
    assert len(picked) == 7 == len(set(picked))
    assert picked[0] == ordered[0] and picked[-1] == ordered[-1]
    assert [ordered.index(s) for s in picked] == sorted(ordered.index(s) for s in picked)
    assert stratified_subnets(space, 7, seed=3) == picked  # deterministic
    assert stratified_subnets(space, 1000) == ordered
    assert pick_subnets(space, ["depth=4", "depth=1,heads=1,ffn=0.25"], 64) == [
        ordered[0],
        space.normalize("depth=4"),
    ]
    with pytest.raises(ValueError, match="subnets: subnet depth=5 is not in the nesting space"):
        pick_subnets(space, ["depth=5"], 64)


def test_pareto_front_and_plot(tmp_path):
    rows = [
        {"subnet": "depth=1", "params": 10, "latency_ms": 1.0, "accuracy": 0.5},
        {"subnet": "depth=2", "params": 20, "latency_ms": 3.0, "accuracy": 0.4},  # dominated
        {"subnet": "depth=3", "params": 30, "latency_ms": 2.0, "accuracy": 0.7},
        {"subnet": "depth=4", "params": 40, "latency_ms": 4.0, "accuracy": 0.7},  # as good, costlier
    ]
    assert pareto_front(rows, "params", "accuracy", True) == [0, 2]
    assert pareto_front(rows, "params", "accuracy", False) == [0, 1]
    png = plot_pareto(rows, tmp_path / "p.png", "accuracy", True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert headline_metric(rows) == ("accuracy", True)
    with pytest.raises(ValueError, match="metric 'bleu' is not in the evaluation table"):
        headline_metric(rows, "bleu")


# ---- evaluation and the checkpoint ---------------------------------------------------------------------
def test_evaluate_matches_the_training_evaluation():
    nested = sn.nest(tiny_vit(), SPACE)
    torch.manual_seed(1)
    batches = [
        {"pixel_values": torch.randn(5, 1, 8, 8), "labels": torch.randint(0, 10, (5,))} for _ in range(2)
    ]
    task = task_for("image_classification")
    subnets = nested.space.subnets()[:3]
    rows = evaluate(nested, batches, task, subnets, latency_batch_size=2, warmup=0, repeats=1)
    base = evaluate_subnets(nested, batches, task, subnets)
    assert [list(r) for r in rows] == [
        ["subnet", "params", "flops", "latency_ms", "latency_ok", "loss", "accuracy"]
    ] * 3
    for got, want in zip(rows, base, strict=True):
        assert got["subnet"] == want["subnet"] and got["params"] == want["params"]
        assert got["accuracy"] == want["accuracy"] and abs(got["loss"] - want["loss"]) < 1e-6
    assert nested.active == nested.space.normalize(nested.space.largest)


def test_update_metadata_keeps_the_weights_bit_identical(tmp_path):
    path = tmp_path / "m.safetensors"
    make_checkpoint(path)
    with safe_open(str(path), framework="pt") as f:
        before = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    update_metadata(path, eval_table=[{"subnet": "depth=2", "params": 1}], eval_info={"device": "cpu"})
    meta = sn.read_metadata(path)
    assert (
        meta["eval_table"] == [{"subnet": "depth=2", "params": 1}]
        and meta["train_config"]["name"] == "tiny_vit"
    )
    with safe_open(str(path), framework="pt") as f:
        assert all(torch.equal(f.get_tensor(k), v) for k, v in before.items())
    assert sn.load(path).metadata["eval_info"] == {"device": "cpu"}
    assert not list(tmp_path.glob("*.tmp"))


# ---- the Hydra app ---------------------------------------------------------------------------------------
def compose_eval(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def test_eval_writes_table_plot_and_checkpoint_metadata(tmp_path, capsys):
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    make_checkpoint(path)
    out = tmp_path / "run" / "eval"
    rows = run(compose_eval(f"ckpt={tmp_path / 'run'}", f"out_dir={out}", *QUICK))
    assert len(rows) == 8
    assert {"table.csv", "table.md", "pareto.png"} <= {p.name for p in out.iterdir()}
    with open(out / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["subnet"] for r in table] == [str(s) for s in sn.load(path).space.subnets()]
    assert {"params", "flops", "latency_ms", "loss", "accuracy"} <= set(table[0])
    meta = sn.read_metadata(path)
    assert meta["eval_table"] == json.loads(json.dumps(rows))
    assert meta["eval_info"]["metric"] == "accuracy" and meta["eval_info"]["device"] == "cpu"
    assert meta["eval_info"]["data"]["dataset"] == "digits"
    printed = capsys.readouterr().out
    assert "8 subnets in" in printed and "per subnet" in printed


def test_eval_default_out_dir_and_a_stratified_sample():
    cfg = compose_eval("ckpt=runs/x/2020/checkpoints/last.safetensors")
    assert cfg.out_dir == "runs/x/2020/eval"
    assert compose_eval("ckpt=a/b.safetensors").out_dir == "a/b_eval"


def test_eval_with_a_data_group_for_a_checkpoint_without_one(tmp_path):
    path = tmp_path / "m.safetensors"
    make_checkpoint(path, data=None)  # saved from the API: no train_config
    rows = run(
        compose_eval(f"ckpt={path}", f"out_dir={tmp_path / 'out'}", "data=digits", "subnets=2", *QUICK)
    )
    assert len(rows) == 2 and sn.read_metadata(path)["eval_info"]["data"]["seed"] == 0


def test_eval_with_another_data_config_and_a_sample(tmp_path):
    path = tmp_path / "m.safetensors"
    make_checkpoint(path, data=None)  # saved from the API: no train_config
    rows, info = evaluate_checkpoint(
        path,
        {"subnets": 3, "flops": False, "latency": {"enabled": False}, "max_batches": 1, "progress": False},
        data_cfg={**DIGITS, "seed": "${seed}"},
    )
    assert [list(r) for r in rows] == [["subnet", "params", "loss", "accuracy"]] * 3
    assert info["subnets"] == 3 and info["space_size"] == 8


@pytest.mark.parametrize(
    "ckpt, overrides, message",
    [
        ("missing.safetensors", [], r"checkpoint '.*missing.safetensors' does not exist"),
        (
            "GOOD",
            ['subnets=["depth=3"]'],
            r"subnets: subnet depth=3 is not in the nesting space; allowed: 2, 4",
        ),
        ("GOOD", ["device=cuda:7"], r"device='cuda:7' is not usable here"),
        ("NODATA", [], r"the checkpoint holds no data config"),
        ("GOOD", ["latency.batch_size=0"], r"latency.batch_size=0 is below 1"),
    ],
)
def test_eval_refuses_bad_input_in_one_line(ckpt, overrides, message, tmp_path, capsys):
    if ckpt in ("GOOD", "NODATA"):
        make_checkpoint(tmp_path / "m.safetensors", data=DIGITS if ckpt == "GOOD" else None)
        ckpt = tmp_path / "m.safetensors"
    else:
        ckpt = tmp_path / ckpt
    before = sn.read_metadata(ckpt) if ckpt.exists() else None
    with pytest.raises(SystemExit) as exit_info:
        run(compose_eval(f"ckpt={ckpt}", f"out_dir={tmp_path / 'out'}", *QUICK, *overrides))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sortednet-eval: error: ") and "\n" not in err
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "out").exists()
    if before is not None:
        assert "eval_table" not in sn.read_metadata(ckpt)


def test_eval_cli_leaves_no_folder_behind(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sortednet.cli.eval", "ckpt=nope.safetensors"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sortednet-eval: error: checkpoint 'nope.safetensors' does not exist"
    ]
    assert list(tmp_path.iterdir()) == []
