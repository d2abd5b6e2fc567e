"""Extracted sub-models saved with save_pretrained load with transformers alone (no sortednet import)."""

import json
import subprocess
import sys
import textwrap

import torch
from tiny import FAMILIES, build, exports_fewer_heads, family, inputs, output, space

import sortednet as sn

LOADER = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    root = sys.argv[1]
    for name in json.load(open(f"{root}/families.json")):
        folder = f"{root}/{name}"
        arch = json.load(open(f"{folder}/config.json"))["architectures"][0]
        model = getattr(transformers, arch).from_pretrained(folder).eval()
        batch = torch.load(f"{folder}/batch.pt")
        with torch.no_grad():
            out = model(**batch)
        logits = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
        torch.save(logits, f"{folder}/got.pt")
    assert not any(m == "sortednet" or m.startswith("sortednet.") for m in sys.modules), "sortednet was imported"
    print("loaded", len(json.load(open(f"{root}/families.json"))))
    """
)


def test_save_pretrained_folders_load_without_sortednet(tmp_path):
    for name in FAMILIES:
        nested = sn.nest(build(name), space(name, depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4]))
        heads = "heads" in family(name).dims and exports_fewer_heads(name)
        subnet = "depth=2,ffn=0.5,heads=2" if heads else "depth=2,ffn=0.5"
        batch = inputs(name)
        with torch.no_grad(), nested.use(subnet):
            want = output(nested, batch)
        folder = tmp_path / name
        nested.extract(subnet).save_pretrained(folder)
        assert (folder / "model.safetensors").is_file()
        torch.save(batch, folder / "batch.pt")
        torch.save(want, folder / "want.pt")
    (tmp_path / "families.json").write_text(json.dumps(FAMILIES))
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in FAMILIES:
        got, want = torch.load(tmp_path / name / "got.pt"), torch.load(tmp_path / name / "want.pt")
        assert (got - want).abs().max().item() <= 1e-5, name
