"""The built wheel works outside the checkout: installed into a fresh virtualenv (reusing this environment's
torch and friends, offline), its commands train, evaluate and export from an empty folder with the configs and
recipes it carries, and the export loads with transformers alone."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(*cmd, cwd, env=None):
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    work = tmp_path_factory.mktemp("install")
    sh(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        ROOT,
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        work / "dist",
        cwd=work,
    )
    wheel = next((work / "dist").glob("sortednet-*.whl"))
    env_dir = work / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=work)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    # this environment's packages (torch, transformers, ...) without its editable sortednet: a plain path line
    # does not run the editable install's own .pth
    (purelib / "reuse.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = env_dir / "bin" / "python"
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel, cwd=work)
    return env_dir


def test_the_wheel_trains_evaluates_and_exports_from_an_empty_folder(venv, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": ""}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    where = sh(
        venv / "bin" / "python", "-c", "import sortednet; print(sortednet.__file__)", cwd=tmp_path, env=env
    )
    assert str(venv) in where  # the installed copy, not the checkout
    assert "digits_vit" in sh("sortednet-train", "--list", cwd=tmp_path, env=env)
    sh(
        "sortednet-train",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.progress=null",
        "hydra.run.dir=run",
        cwd=tmp_path,
        env=env,
    )
    assert (tmp_path / "run" / "checkpoints" / "last.safetensors").is_file()
    sh(
        "sortednet-eval",
        "ckpt=run",
        "latency.repeats=2",
        "latency.warmup=1",
        "max_batches=1",
        "progress=false",
        cwd=tmp_path,
        env=env,
    )
    assert (tmp_path / "run" / "eval" / "table.csv").is_file()
    sh(
        "sortednet-export",
        "run",
        "--subnet",
        "depth=2,heads=2,ffn=0.25",
        "--out",
        "small",
        cwd=tmp_path,
        env=env,
    )
    check = (
        "import sys, torch, transformers\n"
        "m = transformers.AutoModelForImageClassification.from_pretrained('small')\n"
        "assert m.config.num_hidden_layers == 2\n"
        "print(m(pixel_values=torch.zeros(1, 1, 8, 8)).logits.shape)\n"
        "assert 'sortednet' not in sys.modules\n"
    )
    assert "torch.Size([1, 10])" in sh(venv / "bin" / "python", "-c", check, cwd=tmp_path, env=env)


def test_a_copied_recipe_runs_from_anywhere(venv, tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
    }
    sh("sortednet-train", "--copy", "digits_vit", "mine.yaml", cwd=tmp_path, env=env)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(recipe.read_text().replace("name: digits_vit", "name: mine"))
    sh(
        "sortednet-train",
        "--config",
        "mine.yaml",
        "trainer.max_steps=1",
        "eval_table.enabled=false",
        "callbacks.progress=null",
        "hydra.run.dir=run",
        cwd=tmp_path,
        env=env,
    )
    assert "name: mine" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
