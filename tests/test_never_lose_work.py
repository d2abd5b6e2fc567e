"""Nothing a user made is lost: exports delete only earlier exports, a diverged run keeps its last good
checkpoint, checkpoints are written atomically and committed as pairs, one run per folder, resume appends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from test_cli_tools import call
from test_eval import make_checkpoint
from test_train import SPACE, digits, tiny_vit, trainer

import sortednet as sn
from sortednet.atomic import file_mode
from sortednet.cli import export, select
from sortednet.sampling import make_sampler
from sortednet.train import Classification, SortedNetModule
from sortednet.train.callbacks import NestedCheckpoint
from sortednet.train.checkpoint_io import AtomicCheckpointIO, recover, staged
from sortednet.train.loggers import CSVLogger
from sortednet.train.module import Diverged
from sortednet.train.run_lock import RunFolderBusy, RunLock

SUBNET = "depth=2,heads=2,ffn=0.5"


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    make_checkpoint(path, with_table=True)
    return path


# ---- export -------------------------------------------------------------------------------------------
def test_export_refuses_the_current_folder_and_deletes_nothing(ckpt, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (".", "..", str(work)):
        assert call(export.main, ckpt, "--subnet", SUBNET, "--out", out, "--force") == 2
        err = capsys.readouterr().err.strip()
        assert "is the current folder or one above it" in err and "\n" not in err
    assert (work / "notes.txt").read_text() == "mine"


def test_export_never_deletes_files_it_did_not_write(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.csv").write_text("keep me")
    assert call(export.main, ckpt, "--subnet", SUBNET, "--out", out, "--force") == 2
    assert "not an earlier sortednet export" in capsys.readouterr().err
    assert (out / "data.csv").read_text() == "keep me"
    # the run folder and the folder holding the checkpoint are refused too
    for protected in (ckpt.parent, ckpt.parent.parent, tmp_path):
        assert call(export.main, ckpt, "--subnet", SUBNET, "--out", protected, "--force") == 2
        assert "give a folder outside it" in capsys.readouterr().err
    assert ckpt.is_file()


def test_export_replaces_an_earlier_export_only_with_force_and_only_its_own_files(ckpt, tmp_path, capsys):
    out = tmp_path / "small"
    assert call(export.main, ckpt, "--subnet", SUBNET, "--out", out) == 0
    record = json.loads((out / "sortednet.json").read_text())
    assert set(record["files"]) == {p.name for p in out.iterdir()}
    assert all(p.stat().st_mode & 0o777 == file_mode() for p in out.iterdir())
    assert call(export.main, ckpt, "--subnet", SUBNET, "--out", out) == 2
    assert "give --force to replace it" in capsys.readouterr().err
    assert call(export.main, ckpt, "--subnet", "depth=4,heads=4,ffn=1.0", "--out", out, "--force") == 0
    assert json.loads((out / "sortednet.json").read_text())["subnet"] == "depth=4,heads=4,ffn=1.0"
    (out / "my_notes.md").write_text("added by hand")
    assert call(export.main, ckpt, "--subnet", SUBNET, "--out", out, "--force") == 2
    assert "files it did not write (my_notes.md)" in capsys.readouterr().err
    assert (out / "my_notes.md").is_file() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".small")]  # no temporary folder left


def test_select_and_export_refuse_non_finite_weights(tmp_path, capsys):
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    nested = sn.nest(tiny_vit(), SPACE)
    with torch.no_grad():
        nested.model.classifier.weight[0, 0] = float("nan")
    nested.save(
        path,
        metadata={
            "eval_table": [{"subnet": str(s), "params": 1, "accuracy": 0.1} for s in nested.space.subnets()]
        },
    )
    assert sn.read_metadata(path)["nonfinite"] == ["classifier.weight"]
    assert call(select.main, path, "--max-params", "1M") == 2
    assert "non-finite weights (classifier.weight): the run diverged" in capsys.readouterr().err
    assert call(export.main, path, "--subnet", "depth=1,heads=2,ffn=0.25", "--out", tmp_path / "x") == 2
    assert "non-finite weights" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# ---- non-finite steps ---------------------------------------------------------------------------------
class NaNAfter(L.Callback):
    """Poison the inputs of the steps in `bad` (by optimizer step)."""

    def __init__(self, bad):
        self.bad, self.seen = set(bad), []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append(trainer.global_step)
        if batch_idx in self.bad:
            batch["pixel_values"].fill_(float("nan"))


def module_for(max_nonfinite_steps=3):
    nested = sn.nest(tiny_vit(), SPACE)
    sampler = make_sampler("sandwich", nested.space, k=3, seed=0)
    return SortedNetModule(nested, Classification(), sampler, max_nonfinite_steps=max_nonfinite_steps)


def test_a_non_finite_step_is_skipped_and_training_goes_on():
    module, poison = module_for(), NaNAfter({2})
    trainer(max_steps=5, callbacks=[poison]).fit(module, datamodule=digits())
    assert module.skipped_steps == 1 and module.global_step == 5  # 6 batches: one skipped, 5 optimizer steps
    assert all(bool(p.isfinite().all()) for p in module.nested.parameters())


@pytest.mark.parametrize(
    "value, nonfinite", [(1e30, 0.0), (float("inf"), 1.0), (float("-inf"), 1.0), (float("nan"), 1.0)]
)
def test_the_step_guard_reads_gradients_exactly(value, nonfinite):
    """A gradient's NaN or inf skips the step; huge finite gradients (their squared norm overflows) do not."""
    module = module_for()
    for p in module.nested.parameters():
        p.grad = torch.zeros_like(p)
    next(module.nested.parameters()).grad.view(-1)[3] = value
    losses = [(module.nested.space.largest, torch.tensor(1.0))]
    assert float(module._local_nonfinite(losses)) == nonfinite
    assert float(module._local_nonfinite(losses, grads=False)) == 0.0


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    module = module_for(max_nonfinite_steps=3)
    keep = NestedCheckpoint(dirpath=str(tmp_path), every_n_train_steps=2, save_last=True, save_top_k=0)
    fit = trainer(max_steps=20, callbacks=[NaNAfter(range(4, 100)), keep], plugins=[AtomicCheckpointIO()])
    before = None
    with pytest.raises(Diverged) as err:
        fit.fit(module, datamodule=digits())
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("training diverged at step 4: subnet depth=3,heads=4,ffn=1.0 has loss nan, 3")
    assert "train.max_nonfinite_steps=3" in message
    saved = sn.load(tmp_path / "last.safetensors")
    assert sn.read_metadata(tmp_path / "last.safetensors")["global_step"] == 4
    before = {k: v for k, v in saved.base_state_dict().items()}
    after = module.nested.base_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # skipped steps changed no weight
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.safetensors"]


# ---- checkpoint pairs ---------------------------------------------------------------------------------
def _pair(folder: Path, step: int, staged_ckpt=False, staged_one=False, committed=True):
    folder.mkdir(parents=True, exist_ok=True)
    if committed:
        (folder / "last.ckpt").write_text(f"ckpt {step}")
        (folder / "last.safetensors").write_text(f"one {step}")
    if staged_ckpt:
        staged(folder / "last.ckpt").write_text(f"ckpt {step + 1}")
    if staged_one:
        staged(folder / "last.safetensors").write_text(f"one {step + 1}")


@pytest.mark.parametrize(
    "staged_ckpt, staged_one, want",
    [
        (True, False, ("ckpt 1", "one 1")),  # killed while staging: the older pair stands
        (True, True, ("ckpt 1", "one 1")),  # staged, not committed: the older pair stands
        (False, True, ("ckpt 2", "one 2")),  # the .ckpt committed: the .safetensors is completed
    ],
)
def test_recover_never_leaves_a_newer_file_beside_an_older_partner(tmp_path, staged_ckpt, staged_one, want):
    _pair(tmp_path, 1, staged_ckpt, staged_one)
    if not staged_ckpt and staged_one:  # the state after the commit point: .ckpt already renamed
        (tmp_path / "last.ckpt").write_text("ckpt 2")
    (tmp_path / ".last.ckpt.123.tmp").write_text("half")
    done = recover(tmp_path)
    assert done
    assert ((tmp_path / "last.ckpt").read_text(), (tmp_path / "last.safetensors").read_text()) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.safetensors"]


def test_checkpoint_files_are_ordinary_files(tmp_path):
    module = module_for()
    keep = NestedCheckpoint(dirpath=str(tmp_path), every_n_train_steps=2, save_last=True, save_top_k=0)
    trainer(max_steps=2, callbacks=[keep], plugins=[AtomicCheckpointIO()]).fit(module, datamodule=digits())
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"last.ckpt": file_mode(), "last.safetensors": file_mode()}


# ---- one run per folder, resume appends ---------------------------------------------------------------
def test_a_second_process_cannot_take_a_live_runs_folder(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    with pytest.raises(RunFolderBusy, match=rf"in use by another run \(pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    lock.release()
    RunLock(tmp_path).acquire()  # released: free again


def test_a_killed_runs_lock_is_not_stale(tmp_path):
    code = f"from sortednet.train.run_lock import RunLock; RunLock({str(tmp_path)!r}).acquire(); import os; os._exit(9)"
    subprocess.run([sys.executable, "-c", code], check=False)
    assert "pid" in (tmp_path / ".sortednet.lock").read_text()  # the dead run's lock file is still there
    RunLock(tmp_path).acquire()


def test_csv_logger_appends_on_resume(tmp_path):
    first = CSVLogger(str(tmp_path), name="csv", version="")
    first.log_metrics({"loss": 1.0}, step=0)
    first.save()
    second = CSVLogger(str(tmp_path), name="csv", version="")
    second.log_metrics({"loss": 0.5}, step=1)
    second.log_metrics({"loss": 0.4, "acc": 0.9}, step=2)
    second.save()
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert rows[0] == "acc,loss,step" and len(rows) == 4
