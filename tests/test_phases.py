"""Every phase of a run says it is running: anchors or a teacher trained alone, the stitching layers' fit, the
end-of-run evaluation and BatchNorm calibration each print a line when they start, and on a terminal a bar."""

from __future__ import annotations

import io

from hydra import compose, initialize_config_dir

from sortednet.cli.train import CONF_DIR, run
from sortednet.train import console


def test_a_stitched_run_says_each_phase_before_it_runs(tmp_path):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"run_dir={tmp_path}/run",
                "experiment=snnet_digits",
                "stitch.pretrain_steps=3",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
                "callbacks.progress=null",
                "eval_table.max_batches=1",
            ],
        )
    run(cfg)
    log = (tmp_path / "run" / "train.log").read_text()
    lines = [
        "stitch.pretrain_steps=3: anchor small, training alone: 3 steps ...",
        "stitch.pretrain_steps=3: anchor large, training alone: 3 steps ...",
        "stitch: fitting the stitching layers on 4 training batches ...",
        "sub-models on the validation set ...",
    ]
    positions = [log.index(line) for line in lines]
    assert positions == sorted(positions), log


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_phase_draws_a_bar_on_a_terminal(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(console.sys, "stdout", screen)
    with console.phase("anchor small, training alone", 4) as advance:
        for _ in range(4):
            advance(1)
    assert "anchor small, training alone" in screen.getvalue()
    plain = io.StringIO()
    monkeypatch.setattr(console.sys, "stdout", plain)
    with console.phase("quiet", 2) as advance:
        advance(1)
    assert plain.getvalue() == "quiet: 2 steps ...\n"  # not a terminal: the start line only, no bar
