"""One-file checkpoint: save/load/load_submodel per family, lazy slice reads, and bad files."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from tiny import FAMILIES, build, exports_fewer_heads, family, inputs, output, space

import sortednet as sn

SPACE = sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4])


def export_subnet(name):
    if "heads" not in family(name).dims:
        return "depth=2,ffn=0.5"
    return "depth=2,ffn=0.5,heads=2" if exports_fewer_heads(name) else "depth=2,ffn=0.5,heads=4"


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_and_load_submodel(name, tmp_path):
    nested = sn.nest(build(name), space(name, **SPACE.values))
    batch = inputs(name)
    path = tmp_path / "run.safetensors"
    nested.save(path, metadata={"note": "hello"})
    loaded = sn.load(path)
    assert loaded.space == nested.space and loaded.metadata["note"] == "hello"
    assert loaded.family == nested.family and "family" not in loaded.metadata
    for subnet in (nested.space.largest, nested.space.smallest, export_subnet(name)):
        with torch.no_grad(), nested.use(subnet), loaded.use(subnet):
            assert torch.equal(output(loaded, batch), output(nested, batch))
    subnet = export_subnet(name)
    small = sn.load_submodel(path, subnet)
    want = nested.extract(subnet)
    assert type(small) is type(want)
    assert small.state_dict().keys() == want.state_dict().keys()
    assert all(torch.equal(small.state_dict()[k], v) for k, v in want.state_dict().items())
    with torch.no_grad():
        assert torch.equal(output(small, batch), output(want, batch))
    assert all(p.is_contiguous() for p in small.parameters())
    small.save_pretrained(tmp_path / "small")


def test_tied_weights_are_written_once(tmp_path):
    nested = sn.nest(build("gpt2"), SPACE)
    path = tmp_path / "gpt2.safetensors"
    nested.save(path)
    meta = sn.read_metadata(path)
    assert meta["aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    assert "lm_head.weight" not in meta["_keys"]
    loaded = sn.load(path)
    assert loaded.model.lm_head.weight is loaded.model.transformer.wte.weight
    small = sn.load_submodel(path, "depth=2,heads=4,ffn=0.5")
    assert small.lm_head.weight is small.transformer.wte.weight


def test_load_submodel_reads_only_the_subnet_slices(tmp_path, monkeypatch):
    import safetensors

    nested = sn.nest(build("llama"), SPACE)
    path = tmp_path / "llama.safetensors"
    nested.save(path)
    read = {}
    original = safetensors.safe_open

    class Spy:
        def __init__(self, *args, **kwargs):
            self.inner = original(*args, **kwargs)

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def get_tensor(self, key):
            raise AssertionError(f"load_submodel read the whole tensor {key}")

        def get_slice(self, key):
            inner = self.inner.get_slice(key)

            class Slice:
                def __getitem__(_, idx):
                    out = inner[idx]
                    read[key] = read.get(key, 0) + out.numel()
                    return out

            return Slice()

    monkeypatch.setattr("sortednet.export.safe_open", Spy)
    small = sn.load_submodel(path, SPACE.smallest)
    assert sum(read.values()) == sum(t.numel() for t in small.state_dict().values())
    assert not any(".layers.2." in k or ".layers.3." in k for k in read)
    assert read["model.layers.0.mlp.up_proj.weight"] == 24 * 32


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sn.load(tmp_path / "nope.safetensors")


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    for fn in (sn.load, lambda p: sn.load_submodel(p, "depth=2")):
        with pytest.raises(ValueError, match="is a safetensors file that sortednet did not write"):
            fn(path)


def test_not_safetensors_at_all(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        sn.load(path)


@pytest.mark.parametrize("cut", ["data", "header"])
def test_truncated_file(tmp_path, cut):
    nested = sn.nest(build("llama"), SPACE)
    path = tmp_path / "t.safetensors"
    nested.save(path)
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    path.write_bytes(data[: 8 + header_len + 100] if cut == "data" else data[: 8 + header_len // 2])
    with pytest.raises(ValueError, match="truncated"):
        sn.load(path)
    with pytest.raises(ValueError, match="truncated"):
        sn.load_submodel(path, SPACE.smallest)


def test_subnet_outside_the_stored_space(tmp_path):
    nested = sn.nest(build("llama"), SPACE)
    path = tmp_path / "s.safetensors"
    nested.save(path)
    with pytest.raises(ValueError, match=r"subnet depth=3 is not in the nesting space; allowed: 2, 4"):
        sn.load_submodel(path, "depth=3")


def test_metadata_is_json_with_config_and_space(tmp_path):
    nested = sn.nest(build("qwen2"), SPACE)
    path = tmp_path / "q.safetensors"
    nested.save(path)
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    meta = json.loads(header["__metadata__"]["sortednet"])
    assert meta["format"] == "sortednet" and meta["version"] == 1
    assert meta["model_class"] == "Qwen2ForCausalLM"
    assert meta["config"]["num_hidden_layers"] == 4
    assert meta["space"] == {"depth": [2, 4], "heads": [2, 4], "ffn": [0.5, 1.0]}
