"""A resume with an override either applies it or refuses it in one line (sortednet/train/resume.py); the
checkpoint's metadata says what the run used."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_cli_train import QUICK

import sortednet as sn
from sortednet.cli.train import CONF_DIR, run


def config(run_dir, *overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", *QUICK, *overrides])


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume") / "run"
    run(config(folder))
    return folder / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "seed=1",
            "seed=1 differs from the checkpoint's 0, which a resume cannot change (the subnets each step",
        ),
        ("sampler.k=4", "sampler.k=4 differs from the checkpoint's 3, which a resume cannot change (the "),
        (
            "data.batch_size=32",
            "data.batch_size=32 differs from the checkpoint's 64, which a resume cannot change",
        ),
        (
            "optim.head_lr=0.01",
            "optim.head_lr=0.01 differs from the checkpoint's None, which a resume cannot change",
        ),
    ],
)
def test_an_override_a_resume_cannot_honour_is_refused_in_one_line(
    first, override, message, tmp_path, capsys
):
    with pytest.raises(SystemExit) as code:
        run(config(tmp_path / "again", f"ckpt_path={first}", override))
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err and message in err and "allowed: the checkpoint's value (drop the override)" in err
    ), err
    assert not (tmp_path / "again").exists()


def test_optimizer_overrides_are_applied_and_recorded(first, tmp_path, capsys):
    folder = first.parent.parent
    run(
        config(folder, f"ckpt_path={first}", "optim.lr=5e-4", "optim.weight_decay=0.1", "trainer.max_steps=4")
    )
    assert "resume: optim.lr=0.0005 applied (the checkpoint's 0.002)" in (folder / "train.log").read_text()
    state = torch.load(first, map_location="cpu", weights_only=False)
    assert state["global_step"] == 4
    groups = state["optimizer_states"][0]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [5e-4, 5e-4]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert state["lr_schedulers"][0]["base_lrs"] == [5e-4, 5e-4]
    meta = sn.read_metadata(first.with_suffix(".safetensors"))
    assert meta["train_config"]["optim"]["lr"] == 5e-4
    assert meta["train_config"]["resumed"]["changed"]["optim.lr"] == [0.002, 0.0005]
    assert meta["train_config"]["resumed"]["changed"]["trainer.max_steps"] == [2, 4]
