"""Every bad value or file a user can give sortednet-train is refused in one line naming the key, with exit
code 2 and no run folder left; a busy run folder is refused without touching it; resuming checks the pair."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_cli_train import QUICK

import sortednet as sn
from sortednet.cli import export, info
from sortednet.cli.train import CONF_DIR, run
from sortednet.train.run_lock import RunLock


def config(tmp_path: Path, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[f"run_dir={tmp_path}/run", *QUICK, *overrides])


def refused(cfg, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sortednet-train: error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.max_steps=abc", r"trainer.max_steps='abc' is not an int; allowed: an int >= -1"),
        ("data.batch_size=1.5", r"data.batch_size=1.5 is not an int; allowed: an int >= 1"),
        ("optim.lr=-1", r"optim.lr=-1 is not above 0; allowed: a number > 0"),
        ("optim.lr=nan", r"optim.lr=nan is not finite"),
        ("optim.betas=[2,0.999]", r"optim.betas=2 is not below 1; allowed: a number >= 0 and < 1"),
        ("seed=abc", r"seed='abc' is not an int"),
        ("train.grad_clip=-1", r"train.grad_clip=-1 is not above 0"),
        (
            "train.subnet_weights={depth_2:2.0}",
            r"subnet part 'depth_2' is not dim=value",
        ),
        (
            'train.subnet_weights=["depth=2,ffn=0.25,heads=2:-1"]',
            r"train.subnet_weights\[depth=2,ffn=0.25,heads=2\]=-1.0 is not above 0",
        ),
        ("trainer.accelerator=gpu", r"trainer.accelerator='gpu' but this machine has no GPU"),
        ("trainer.precision=8-bit", r"trainer.precision='8-bit' is unknown"),
        ("model.pretrained=/no/such/model", r"model.pretrained='/no/such/model' does not exist"),
        ("callbacks.checkpoint._target_=nope.Bar", r"Error loading 'nope.Bar'"),
        ("+data.nope=1", r"TypeError: .*unexpected keyword argument 'nope'"),
    ],
)
def test_bad_values_are_refused_in_one_line(override, message, tmp_path, capsys):
    if override.startswith("trainer.accelerator") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    err = refused(config(tmp_path, override), capsys)
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "sampler=nope",
            "Could not find 'sampler/nope' Available options in 'sampler': all, budget, ros, sandwich, sorted, uniform",
        ),
        ("trainer.nope=1", "Could not override 'trainer.nope'. To append to your config use +trainer.nope=1"),
        ("nesting.depth=[2,4", "no viable alternative at input '[2,4'"),
    ],
)
def test_hydra_errors_are_one_line_too(override, message, capsys):
    from sortednet.cli.train import compose_config

    with pytest.raises(SystemExit) as exit_info:
        compose_config([override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_subnet_weights_on_the_command_line(tmp_path):
    cfg = config(
        tmp_path,
        'train.subnet_weights=["depth=2,ffn=0.25,heads=2:2.0"]',
        "trainer.max_steps=1",
        "eval_table.enabled=false",
    )
    run(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"run_dir={folder}/run", *QUICK, "trainer.enable_progress_bar=false"]
        )
    run(cfg)  # trainer.enable_progress_bar=false trains (it crashed with the rich progress bar before)
    return folder / "run"


@pytest.mark.parametrize("case", ["missing", "random", "empty", "safetensors", "space", "pair"])
def test_bad_resume_checkpoints_are_refused_before_training(case, finished_run, tmp_path, capsys):
    last = finished_run / "checkpoints" / "last.ckpt"
    overrides, message = [f"ckpt_path={last}"], ""
    if case == "missing":
        overrides, message = [f"ckpt_path={tmp_path}/nope.ckpt"], "does not exist"
    elif case in ("random", "empty"):
        bad = tmp_path / "bad.ckpt"
        bad.write_bytes(b"" if case == "empty" else bytes(range(256)) * 64)
        overrides, message = [f"ckpt_path={bad}"], "is not a Lightning checkpoint (empty, truncated"
    elif case == "safetensors":
        overrides, message = (
            [f"ckpt_path={last.with_suffix('.safetensors')}"],
            "is the one-file model checkpoint",
        )
    elif case == "space":
        overrides, message = [f"ckpt_path={last}", "nesting.depth=[2,6]"], "trained the nesting space"
    elif case == "pair":
        copy = tmp_path / "copy"
        copy.mkdir()
        (copy / "last.ckpt").write_bytes(last.read_bytes())
        other = sn.load(last.with_suffix(".safetensors"))
        other.save(copy / "last.safetensors", metadata={"global_step": 1})
        overrides, message = (
            [f"ckpt_path={copy / 'last.ckpt'}"],
            "but its partner last.safetensors is of step 1",
        )
    err = refused(config(tmp_path, *overrides), capsys)
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_a_live_runs_folder_is_refused_and_left_as_it_was(finished_run, capsys):
    with RunLock(finished_run):
        before = {p: p.stat().st_mtime_ns for p in finished_run.rglob("*")}
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"run_dir={finished_run}", *QUICK])
        err = refused(cfg, capsys)
        assert {p: p.stat().st_mtime_ns for p in finished_run.rglob("*")} == before
    assert "is in use by another run (pid " in err


def test_readers_take_a_run_folder_and_explain_a_ckpt(finished_run, capsys):
    nested = sn.load(finished_run)  # a run folder is its checkpoints/last.safetensors
    assert len(nested.space) == 18
    last = finished_run / "checkpoints" / "last.ckpt"
    for main in (info.main, export.main):
        args = [str(last)] + (
            ["--subnet", "depth=2", "--out", str(finished_run.parent / "x")] if main is export.main else []
        )
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        assert (
            "is a Lightning training checkpoint (for resuming with ckpt_path=); give its one-file partner"
            in (capsys.readouterr().err)
        )


@pytest.mark.parametrize(
    "field, value", [("space", "nope"), ("config", {"no_model_type": 1}), ("aliases", None)]
)
def test_a_tampered_header_is_refused_in_one_line(field, value, finished_run, tmp_path, capsys):
    from sortednet.checkpoint import FORMAT, update_metadata

    path = tmp_path / "tampered.safetensors"
    path.write_bytes((finished_run / "checkpoints" / "last.safetensors").read_bytes())
    update_metadata(path, **{field: value})
    for main in (info.main, export.main):
        args = [str(path)] + (
            ["--subnet", "depth=2", "--out", str(tmp_path / "x")] if main is export.main else []
        )
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert "has a damaged header" in err and "\n" not in err, err
    assert FORMAT


@pytest.mark.parametrize("train_mode", [True, False])
def test_pretrained_models_train_with_dropout_unless_asked(train_mode, tmp_path):
    import transformers as T

    from sortednet.cli.train import build
    from sortednet.train.config import check

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    T.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / "bert")
    config_ = T.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=2,
    )
    T.BertForSequenceClassification(config_).save_pretrained(tmp_path / "bert")
    files = {}
    for split in ("train", "validation"):
        files[split] = tmp_path / f"{split}.csv"
        files[split].write_text("text,label\n" + "".join(f"a b c {i},{i % 2}\n" for i in range(40)))
    cfg = config(
        tmp_path,
        "experiment=minilm_nested",
        f"model.pretrained={tmp_path / 'bert'}",
        f"model.train_mode={str(train_mode).lower()}",
        f"data.data_files={{train:{files['train']},validation:{files['validation']}}}",
        "nesting.depth=[1,2]",
        "nesting.ffn=[0.5,1.0]",
        "train.distill.teacher_steps=2",
    )
    _, module = build(check(cfg), tmp_path)
    assert all(m.training for m in module.nested.modules()) is train_mode
