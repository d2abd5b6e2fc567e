"""nesting.reorder in sortednet-train: calibrated on the run's training data before the first step, function
unchanged, recorded in the checkpoint, shown by sortednet-info with the block influence; bad values refused in
one line before anything is written; a resumed run keeps its order."""

import re

import pytest
import torch
from hydra import compose, initialize_config_dir

import sortednet as sn
from sortednet.cli import info
from sortednet.cli.train import CONF_DIR, run
from sortednet.data.loader import first_batches as calibration_batches
from sortednet.train import task_for
from sortednet.train.config import check as check_config
from sortednet.train.config import make
from sortednet.train.models import ModelSpec

QUICK = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "callbacks.progress=null",
    "eval_table.max_batches=2",
]


def config(tmp_path, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={tmp_path}/run", *QUICK, *overrides])


def ordered(model, checked, data):
    """What sortednet-train's build does with nesting.reorder: nest with the order on the first batches."""
    method = checked.reorder.method
    batches = calibration_batches(data, checked.reorder.batches) if method != "magnitude" else []
    loss = task_for(data.task).model_loss
    return sn.nest(model, checked.space, order=method, batches=batches, loss=loss)


def digits(cfg):
    data = make(cfg.data)
    data.prepare_data()
    data.setup("fit")
    return data


CHAR_GPT2 = ["experiment=shakespeare_gpt2", "data.max_chars=40000", "data.batch_size=4"]


@pytest.mark.parametrize(
    "method, recipe",
    [("activation", []), ("magnitude", []), ("taylor", []), ("activation", CHAR_GPT2), ("taylor", CHAR_GPT2)],
)
def test_reorder_before_training_keeps_the_function_and_is_recorded(method, recipe, tmp_path):
    cfg = config(tmp_path, *recipe, f"nesting.reorder={method}", "nesting.reorder_batches=2")
    checked = check_config(cfg)
    data = digits(cfg)
    spec: ModelSpec = checked.model
    torch.manual_seed(0)
    model = spec.build(data.model_kwargs()).eval()
    batch = {k: v for k, v in next(iter(data.val_dataloader())).items() if k != "labels"}
    with torch.no_grad():
        want = model(**batch).logits
    nested = ordered(model, checked, data)
    record = nested.metadata["permutation"]
    assert record["method"] == method and record["dims"] == ["ffn", "heads"]
    assert record["batches"] == (0 if method == "magnitude" else 2)
    assert any(p != sorted(p) for p in record["permutations"].values())
    with torch.no_grad():
        assert (nested.eval()(**batch).logits - want).abs().max().item() <= 1e-5


def test_a_space_with_rank_is_reordered_before_it_is_factorised(tmp_path):
    cfg = config(tmp_path, "nesting.reorder=activation", "+nesting.rank=[0.5,1.0]")
    checked = check_config(cfg)
    data = digits(cfg)
    torch.manual_seed(0)
    model = checked.model.build(data.model_kwargs()).eval()
    batch = {k: v for k, v in next(iter(data.val_dataloader())).items() if k != "labels"}
    with torch.no_grad():
        want = model(**batch).logits
    nested = ordered(model, checked, data)
    assert nested.low_rank_modules() and nested.metadata["permutation"]["dims"] == ["ffn", "heads"]
    with torch.no_grad():  # at full rank the factors reproduce the weights to float rounding
        assert (nested.eval()(**batch).logits - want).abs().max().item() <= 1e-4


def test_calibration_batches_are_the_first_training_batches(tmp_path):
    data = digits(config(tmp_path))
    loader = data.train_dataloader()
    first = [b for b, _ in zip(loader, range(3), strict=False)]
    for got, want in zip(calibration_batches(data, 3), first, strict=True):
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


@pytest.mark.slow
def test_sortednet_train_reorders_records_and_info_shows_it(tmp_path, capsys):
    cfg = config(tmp_path, "nesting.reorder=activation", "nesting.reorder_batches=2")
    rows = run(cfg)
    out = capsys.readouterr().out
    assert len(rows) == 18
    assert re.search(
        r"nesting.reorder=activation: ffn, heads ordered by importance on 2 training batches", out
    )
    assert "block influence per layer (1 - cos(input, output), low = cheap to cut): 0: " in out
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    meta = sn.read_metadata(path)
    assert meta["permutation"]["method"] == "activation" and len(meta["permutation"]["permutations"]) == 12
    influence = meta["block_influence"]
    assert len(influence["values"]) == 6 and influence["data"] == "validation" and influence["batches"] == 2
    assert all(0 <= v <= 2 for v in influence["values"])
    assert sn.load(path).metadata["permutation"] == meta["permutation"]
    assert info.main([str(tmp_path / "run")]) is None
    out = capsys.readouterr().out
    assert "importance order" in out and "activation on 2 calibration batches: ffn, heads" in out
    assert "block influence" in out and "cheapest:" in out
    # a resume keeps the order it started with: the record comes from the checkpoint (no calibration) ...
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checked = check_config(config(tmp_path, f"ckpt_path={ckpt}", "nesting.reorder=activation"))
    assert checked.resumed["permutation"] == meta["permutation"]
    # ... and another nesting.reorder is refused before training
    with pytest.raises(SystemExit) as exit_info:
        run(config(tmp_path, f"ckpt_path={ckpt}", "nesting.reorder=taylor"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sortednet-train: error: nesting.reorder=taylor but ckpt_path={str(ckpt)!r} was trained with "
        "nesting.reorder=activation; resume with the run's own nesting.reorder"
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["nesting.reorder=random"],
            "nesting.reorder='random' is unknown; allowed: activation, magnitude, taylor or null",
        ),
        (["nesting.reorder=taylor", "nesting.reorder_batches=0"], "nesting.reorder_batches=0 is below 1"),
        (
            ["nesting.reorder=activation", "~nesting.ffn", "~nesting.heads"],
            "nesting.reorder=activation has nothing to order: the nesting space nests depth; allowed: a space "
            "with ffn, heads, hidden, or nesting.reorder=null",
        ),
    ],
)
def test_bad_reorder_config_is_refused_before_training(overrides, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(config(tmp_path, *overrides))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sortednet-train: error: ") and "\n" not in err
    assert message in err, err
    assert not (tmp_path / "run").exists()
