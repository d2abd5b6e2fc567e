"""Bad input to the Python API and the readers ends in one line naming the thing, the value (at most ~100
characters of it) and what is allowed; nothing is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_stitch import vit
from tiny import build

import sortednet as sn
from sortednet.cli import export, info


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text
    return text


@pytest.fixture(scope="module")
def nested():
    return sn.nest(build("llama"), sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0]))


@pytest.mark.parametrize("model", ["not a model", None, 3])
def test_nest_refuses_what_is_not_a_model(model):
    with pytest.raises(ValueError) as err:
        sn.nest(model, "depth=2|4")
    assert "nest() takes a transformers PreTrainedModel; got" in one_line(err)


@pytest.mark.parametrize(
    "subnet, message",
    [
        ("colour=red", "unknown dimension 'colour'; allowed: depth, hidden, heads, ffn, rank, channels"),
        ("colour=3", "unknown dimension 'colour'; allowed"),
        ("depth=two", "depth='two' is not a number; allowed: an int >= 1 or a fraction in (0, 1]"),
        ("x" * 100_000, "(100002 characters) is not dim=value"),
        ("depth=" + "9" * 100_000, "(100002 characters) is not a number"),
        ("depth=2," * 20_000, "characters) gives 'depth' twice"),
    ],
)
def test_a_bad_subnet_is_named_and_quoted_short(nested, subnet, message):
    for call in (nested.activate, nested.num_params, nested.extract):
        with pytest.raises(ValueError) as err:
            call(subnet)
        text = one_line(err)
        assert message in text, text
        assert len(text) < 250


def test_a_bad_stitch_is_quoted_short():
    stitched = sn.stitch({"small": vit(16, 4), "large": vit(32, 4, seed=1)})
    for spelling in ("x" * 100_000, "small:" + "1" * 100_000 + ">large:2"):
        with pytest.raises(ValueError) as err:
            stitched.activate(spelling)
        assert "characters)" in one_line(err) and len(str(err.value)) < 300


def test_save_to_a_folder_names_the_folder(nested, tmp_path):
    with pytest.raises(ValueError) as err:
        nested.save(tmp_path)
    assert f"{str(tmp_path)!r} is a folder; give the path of a file to write" in one_line(err)
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_an_empty_ckpt_is_not_called_a_lightning_checkpoint(tmp_path, capsys):
    empty = tmp_path / "last.ckpt"
    empty.touch()
    with pytest.raises(ValueError) as err:
        sn.load(empty)
    assert "is not a checkpoint (0 bytes, not a Lightning zip archive" in one_line(err)
    with pytest.raises(SystemExit):
        info.main([str(empty)])
    assert "is not a checkpoint (0 bytes" in capsys.readouterr().err


def tampered(source: Path, target: Path, edit) -> Path:
    raw = source.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    target.write_bytes(len(new).to_bytes(8, "little") + new + raw[8 + length :])
    return target


def _transpose(header):
    header["lm_head.weight"]["shape"] = header["lm_head.weight"]["shape"][::-1]


def _to_int(header):
    header["lm_head.weight"]["dtype"] = "I32"


@pytest.mark.parametrize(
    "edit, message",
    [
        (_transpose, "tensor 'lm_head.weight' has shape [32, 64], the header's model needs [64, 32]"),
        (_to_int, "tensor 'lm_head.weight' is I32, the header's model needs float32"),
    ],
)
def test_a_header_that_disagrees_with_its_tensors_is_refused(nested, tmp_path, capsys, edit, message):
    good = tmp_path / "good.safetensors"
    nested.save(good)
    bad = tampered(good, tmp_path / "bad.safetensors", edit)
    for call in (sn.load, lambda p: sn.load_submodel(p, "depth=2")):
        with pytest.raises(ValueError) as err:
            call(bad)
        assert "has a damaged header: its tensors disagree with its model: " + message in one_line(err)
    for main, extra in (
        (info.main, []),
        (export.main, ["--subnet", "depth=2", "--out", str(tmp_path / "x")]),
    ):
        with pytest.raises(SystemExit) as code:
            main([str(bad), *extra])
        assert code.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    assert not (tmp_path / "x").exists()
