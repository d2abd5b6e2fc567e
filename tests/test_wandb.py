"""logger=wandb with WANDB_MODE=offline (no account): the run folder holds the per-subnet metrics, the full
evaluation as a wandb.Table, the Pareto scatter and plot; the model artifact is uploaded by online runs only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sortednet.train.eval_callback import wants_artifact

pytest.importorskip("wandb")


@pytest.mark.slow
def test_offline_run_folder_holds_the_evaluation_table(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [
        "logger=wandb",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.progress=null",
        "eval_table.max_batches=1",
        f"hydra.run.dir={run}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "sortednet.cli.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (offline,) = (run / "wandb").glob("offline-run-*")
    (table_file,) = (offline / "files" / "media" / "table" / "eval").glob("table_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["subnet", "params", "loss", "accuracy", "pareto"]
    assert len(table["data"]) == 18 and table["data"][0][0] == "depth=2,heads=2,ffn=0.25"
    assert any(row[-1] for row in table["data"])  # the Pareto frontier is marked
    assert list((offline / "files" / "media" / "images" / "eval").glob("pareto_*.png"))
    (log,) = offline.glob("run-*.wandb")
    raw = log.read_bytes()
    assert (
        b"eval/accuracy/depth=2,heads=2,ffn=0.25" in raw and b"eval/accuracy/depth=6,heads=4,ffn=1.0" in raw
    )
    assert b"eval/pareto_scatter" in raw
    assert f"sortednet-{offline.name.rsplit('-', 1)[-1]}".encode() not in raw  # no model artifact offline
    assert (run / "pareto.png").is_file()


@pytest.mark.parametrize(
    "offline, mode, upload",
    [(False, "online", True), (True, "offline", False), (False, "disabled", False), (True, None, False)],
)
def test_the_model_artifact_is_for_online_runs_only(offline, mode, upload):
    assert wants_artifact(SimpleNamespace(offline=offline, settings=SimpleNamespace(mode=mode))) is upload
