"""sortednet-train from the command line: overrides work, and bad configs are refused in one line."""

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from sortednet.cli.train import CONF_DIR, run

QUICK = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "callbacks.progress=null",
    "eval_table.enabled=false",
]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["sampler=uniform", "sampler.k=40"], r"sampler.k=40 is above 18; allowed: an int >= 1 and <= 18"),
        (
            ['val.subnets=["depth=3"]'],
            r"val.subnets: subnet depth=3 is not in the nesting space; allowed: 2, 4, 6",
        ),
        (
            ["sampler=uniform", "train.distill.enabled=true"],
            r"train.distill.enabled=true needs the largest subnet",
        ),
        (["optim.schedule=step"], r"optim.schedule='step' is unknown; allowed: cosine, linear, constant"),
        (["optim.update=some"], r"optim.update='some' is unknown; allowed: all, touched"),
        (
            ["optim.update=touched", "trainer.strategy=fsdp2_nested"],
            r"optim.update='touched' is not supported with trainer.strategy=fsdp2_nested .*allowed with FSDP: "
            r"optim.update=all",
        ),
        (["train.accumulate=0"], r"train.accumulate=0 is below 1"),
        (["nesting.ffn=[0.0,1.0]"], r"ffn=0.0 is outside \(0, 1\]"),
        (["nesting.heads=[2,8]"], r"heads=8 exceeds the model's 4 attention heads"),
        (["+nesting.channels=[32,64]"], r"dimension 'channels' cannot be nested for model family 'vit'"),
        (["model.head=each"], r"model.head='each' is unknown; allowed: shared, per_depth"),
        (
            ["model.head=per_depth", "~nesting.depth"],
            r"model.head='per_depth' needs a nesting space over depth",
        ),
        (["model.class_name=NopeModel"], r"model.class_name='NopeModel' is not a transformers model class"),
        (["data.val_fraction=1.5"], r"val_fraction must be in the open interval \(0, 1\), got 1.5"),
    ],
)
def test_bad_config_is_refused_before_training(overrides, message, tmp_path, capsys):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"run_dir={tmp_path}/run", *QUICK, *overrides])
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sortednet-train: error: ") and "\n" not in err
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp_path / "run").exists()


def cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "sortednet.cli.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_refuses_in_one_line_and_writes_nothing(tmp_path):
    result = cli("sampler=sandwich", "sampler.k=1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "sortednet-train: error: sampler.k=1 is too small for sampler=sandwich; allowed: k >= 2"
    )
    assert not (tmp_path / "run").exists()


def test_check_validates_a_config_without_building_or_writing_anything(tmp_path):
    ok = cli("--check", "experiment=snnet_digits", "sampler.k=4", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "members     35 (smallest small, largest large)" in ok.stdout
    assert "uniform, k=4 per step" in ok.stdout and "stitch.pretrain_steps=400" in ok.stdout
    assert ok.stdout.rstrip().endswith("config OK: nothing was built or written")
    bad = cli("--check", "optim.lr=fast", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert (
        bad.stderr.strip() == "sortednet-train: error: optim.lr='fast' is not a number; allowed: a number > 0"
    )
    typo = cli("--check", "samplr=all", cwd=tmp_path)
    assert typo.returncode == 2 and len(typo.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_overrides_train_and_write_the_run_folder(tmp_path):
    result = cli("sampler=sandwich", "sampler.k=4", *QUICK[:3], f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text().count("sampler.k=4") == 1


def test_a_head_per_depth_trains_and_exports_what_use_predicts(tmp_path):
    import torch

    import sortednet as sn

    result = cli("model.head=per_depth", *QUICK[:3], f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    nested = sn.load(tmp_path / "run")
    assert nested.options["head"] == "per_depth"
    subnet = nested.space.smallest
    out = tmp_path / "small"
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "sortednet.cli.export",
            str(tmp_path / "run"),
            "--subnet",
            str(subnet),
            "--out",
            str(out),
            "--grey",  # the exact 1-channel sub-model (the default export takes RGB input, for pipeline())
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert export.returncode == 0, export.stderr[-2000:]
    import transformers

    plain = transformers.AutoModelForImageClassification.from_pretrained(out).eval()
    pixels = torch.randn(3, 1, 8, 8)
    with torch.no_grad(), nested.use(subnet):
        torch.testing.assert_close(plain(pixel_values=pixels).logits, nested(pixel_values=pixels).logits)
    assert sum(p.numel() for p in plain.parameters()) == nested.num_params(subnet)
