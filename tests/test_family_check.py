"""check_family over every registered model type, the check nest() runs for unverified families, the family in
the checkpoint header, the registry (override, entry points) and the one-line refusals."""

import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from importlib import metadata

import pytest
import torch
import transformers as T
from tiny import BUILDERS, CHECK_OVERRIDES, DEBERTA_V3, STAGE_BUILDERS, inputs, output

import sortednet as sn
from sortednet import FamilyCheckError, check_family, families, testing
from sortednet.families import Family, Projection, register, registered, supported_model_types
from sortednet.families.llama import LLAMA


@pytest.fixture
def registry():
    """Registrations made in a test are undone after it."""
    saved = dict(families._REGISTRY)
    yield families._REGISTRY
    families._REGISTRY.clear()
    families._REGISTRY.update(saved)


# ---- every registered model type ---------------------------------------------------------------
@pytest.mark.parametrize("model_type", supported_model_types())
def test_check_family_passes_for_every_registered_model_type(model_type):
    family = registered(model_type)
    report = check_family(model_type, **CHECK_OVERRIDES.get(model_type, {}))
    assert report.dims == family.dims and family.verified
    assert report.diffs["largest vs original"] == 0
    assert report.diffs["use() vs reference"] <= testing.TOLERANCE
    assert report.diffs["extract() vs reference"] <= testing.TOLERANCE
    assert report.diffs["load_submodel() vs extract()"] == 0
    if "rank" in family.dims:
        assert report.diffs["rank use() vs reference"] <= testing.RANK_TOLERANCE
    assert report.subnets >= (10 if "rank" in family.dims else 9)
    if report.model_class.endswith(("CausalLM", "LMHeadModel")):
        assert "generate mismatches" in report.diffs


def test_deberta_without_shared_keys_nests_its_position_projections():
    report = check_family("deberta-v2", **dict(DEBERTA_V3, share_att_key=False))
    assert report.diffs["use() vs heads-zeroed reference"] <= testing.TOLERANCE


def test_every_registered_model_type_has_a_tiny_model():
    builders = {**BUILDERS, **STAGE_BUILDERS}
    assert set(supported_model_types()) <= {build().config.model_type for build in builders.values()}


def test_every_family_survives_json_unchanged():
    for model_type in supported_model_types():
        family = registered(model_type)
        again = families.family_from_dict(json.loads(json.dumps(family.to_dict())))
        assert again == family and not again.verified


# ---- the check catches what the issue found ------------------------------------------------------
PHI3_LIKE_QWEN3 = Family(  # how a user would declare Phi-3 by copying Qwen3's declaration
    name="my-phi3",
    model_types=("phi3",),
    layers="layers",
    projections={
        "self_attn.qkv_proj": Projection(("q", "kv", "kv"), "hidden"),
        "self_attn.o_proj": Projection(("hidden",), "q"),
        "mlp.gate_up_proj": Projection(("ffn", "ffn"), "hidden"),
        "mlp.down_proj": Projection(("hidden",), "ffn"),
    },
    config_keys={
        "depth": "num_hidden_layers",
        "heads": "num_attention_heads",
        "kv_heads": "num_key_value_heads",
        "ffn": "intermediate_size",
        "hidden": "hidden_size",
    },
    head_dim_in_config=True,
)


def test_a_phi3_family_with_heads_is_refused_by_nest_in_one_line():
    model = BUILDERS["phi3"]()
    with pytest.raises(FamilyCheckError) as err:
        sn.nest(model, sn.NestingSpace(depth=[2, 4], heads=[2, 4]), family=PHI3_LIKE_QWEN3)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "nest() checked family 'my-phi3' on a tiny Phi3ForCausalLM (depth=2,hidden=32,heads=4,ffn=48): subnet "
    )
    assert "use() vs reference differ by" in message and "check=False" in message
    assert not any(type(m).__module__.startswith("sortednet") for m in model.modules())  # left untouched
    # the same family without heads is exact, and the built-in one refuses heads naming what it supports
    sn.nest(BUILDERS["phi3"](), sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0]), family=PHI3_LIKE_QWEN3)
    with pytest.raises(ValueError) as err:
        sn.nest(BUILDERS["phi3"](), sn.NestingSpace(heads=[2, 4]))
    assert str(err.value) == (
        "dimension 'heads' cannot be nested for model family 'phi3' (Phi3Attention splits qkv_proj at "
        "config.num_attention_heads inside forward); it supports: depth, ffn, hidden, rank"
    )


def test_a_deberta_family_without_its_head_count_attribute_fails_the_check():
    family = dataclasses.replace(registered("deberta-v2"), layer_attrs={})
    with pytest.raises(
        FamilyCheckError, match=r"subnet .*heads=2.*: use\(\) vs heads-zeroed reference differ by"
    ):
        check_family("deberta-v2", ["heads"], family=family, **DEBERTA_V3)


@pytest.mark.parametrize(
    ("model_type", "dim", "why"),
    [
        ("gemma2", "hidden", "its embeddings are scaled by sqrt(config.hidden_size) of the full model"),
        ("deberta-v2", "hidden", "its encoder reads rel_embeddings.weight at full width"),
    ],
)
def test_unsupported_dimensions_are_refused_in_one_line(model_type, dim, why):
    family = registered(model_type)
    with pytest.raises(ValueError) as err:
        sn.nest(BUILDERS[model_type](), sn.NestingSpace({dim: [16, 32]}))
    assert str(err.value) == (
        f"dimension {dim!r} cannot be nested for model family {family.name!r} ({why}); "
        f"it supports: {', '.join(family.dims)}"
    )


# ---- the check nest() runs -----------------------------------------------------------------------
def test_nest_checks_an_unverified_family_once_and_quickly(monkeypatch):
    family = dataclasses.replace(LLAMA, name="llama-copy", verified=False)
    runs = []
    original = testing._Checker.run
    monkeypatch.setattr(
        testing._Checker,
        "run",
        lambda self, dims, quick: runs.append((dims, quick)) or original(self, dims, quick),
    )
    monkeypatch.setattr(testing, "_QUICK_RESULTS", {})
    space = sn.NestingSpace(depth=[2, 4], heads=[2, 4], ffn=[0.5, 1.0], hidden=[16, 32])
    start = time.perf_counter()
    nested = sn.nest(BUILDERS["llama"](), space, family=family)
    first = time.perf_counter() - start
    assert runs == [(("depth", "heads", "ffn", "hidden"), True)]
    assert first < 5  # ~0.2 s on an idle core; generous for a shared machine
    sn.nest(BUILDERS["llama"](), space, family=family)
    assert len(runs) == 1  # once per process for this family, class and dimensions
    sn.nest(BUILDERS["llama"](), space, family=family, check=False)
    sn.nest(BUILDERS["llama"](), space)  # the built-in family is verified
    assert len(runs) == 1
    sn.nest(BUILDERS["llama"](), space, check=True)
    assert len(runs) == 2
    batch = inputs("llama")
    with torch.no_grad(), nested.use("depth=2,heads=2,ffn=0.5,hidden=16"):
        assert torch.isfinite(output(nested, batch)).all()


def test_the_check_leaves_the_random_state_and_threads_alone(monkeypatch):
    monkeypatch.setattr(testing, "_QUICK_RESULTS", {})
    family = dataclasses.replace(LLAMA, name="llama-copy", verified=False)
    model = BUILDERS["llama"]()
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    sn.nest(model, sn.NestingSpace(depth=[2, 4]), family=family)
    after = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(3)) and torch.get_num_threads() == threads


# ---- the family in the checkpoint header -------------------------------------------------------
OLMO = dataclasses.replace(LLAMA, name="olmo", model_types=("olmo",), verified=False)


def olmo():
    torch.manual_seed(0)
    config = T.OlmoConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return T.OlmoForCausalLM(config).eval()


READER = textwrap.dedent(
    """
    import sys, torch
    import sortednet as sn
    from sortednet.cli.info import main as info
    from sortednet.families import registered
    path, batch_path = sys.argv[1:]
    assert registered("olmo") is None
    batch = torch.load(batch_path)
    nested = sn.load(path)
    with torch.no_grad(), nested.use("depth=2,heads=2,ffn=0.5"):
        torch.save(nested(**batch).logits, path + ".use.pt")
    with torch.no_grad():
        torch.save(sn.load_submodel(path, "depth=2,heads=2,ffn=0.5")(**batch).logits, path + ".sub.pt")
    info([path])
    """
)


def test_a_checkpoint_of_a_user_family_loads_in_a_fresh_process(registry, tmp_path):
    register(OLMO)
    nested = sn.nest(olmo(), sn.NestingSpace(depth=[2, 4], heads=[2, 4], ffn=[0.5, 1.0]))
    path = tmp_path / "olmo.safetensors"
    nested.save(path)
    assert sn.read_metadata(path)["family"] == OLMO.to_dict()
    batch = inputs("llama")
    torch.save(batch, tmp_path / "batch.pt")
    result = subprocess.run(
        [sys.executable, "-c", READER, str(path), str(tmp_path / "batch.pt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OlmoForCausalLM (olmo)" in result.stdout
    with torch.no_grad(), nested.use("depth=2,heads=2,ffn=0.5"):
        want = output(nested, batch)
    assert torch.equal(torch.load(f"{path}.use.pt"), want)
    assert (torch.load(f"{path}.sub.pt") - want).abs().max().item() <= 1e-5


def test_a_sub_model_the_model_code_cannot_run_is_refused_in_one_line():
    """OLMo's LayerNorm has no weight, so nothing cuts it to a smaller hidden size: the model code fails."""
    with pytest.raises(FamilyCheckError) as err:
        sn.nest(olmo(), sn.NestingSpace(depth=[2, 4], hidden=[16, 32]), family=OLMO)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(
        "nest() checked family 'olmo' on a tiny OlmoForCausalLM (depth=2,hidden=32,heads=4,ffn=48): "
        "subnet depth=1,hidden=16 under use(): RuntimeError: "
    )


def test_the_stored_family_wins_over_a_different_registered_one(registry, tmp_path):
    register(OLMO)
    nested = sn.nest(olmo(), sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0]))
    path = tmp_path / "olmo.safetensors"
    nested.save(path)
    assert sn.load(path).family is OLMO  # equal: the registered object is used
    other = dataclasses.replace(OLMO, name="olmo-other", dims=("depth", "ffn"))
    register(other, override=True)
    with pytest.warns(UserWarning, match="the checkpoint's family 'olmo' differs from the registered family"):
        loaded = sn.load(path)
    assert loaded.family == OLMO


def test_a_checkpoint_without_a_stored_family_uses_the_registry(tmp_path):
    nested = sn.nest(BUILDERS["qwen3"](), sn.NestingSpace(depth=[2, 4]))
    path = tmp_path / "old.safetensors"
    nested.save(path)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    own = json.loads(header["__metadata__"]["sortednet"])
    del own["family"]  # as files written before families were stored
    header["__metadata__"]["sortednet"] = json.dumps(own)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + length :])
    assert sn.load(path).family is registered("qwen3")


# ---- the registry ---------------------------------------------------------------------------------
def test_register_refuses_to_overwrite_without_override(registry):
    other = dataclasses.replace(LLAMA, name="my-llama")
    with pytest.raises(ValueError) as err:
        register(other)
    assert str(err.value) == (
        "model type 'llama' is already registered by family 'llama'; "
        "pass override=True to replace it with family 'my-llama'"
    )
    register(LLAMA)  # the same family again changes nothing
    register(other, override=True)
    assert registered("qwen2") is other


class FakeEntryPoint:
    def __init__(self, name, obj):
        self.name, self.value, self.obj = name, f"fake_pkg:{name}", obj

    def load(self):
        if isinstance(self.obj, Exception):
            raise self.obj
        return self.obj


def test_families_register_through_entry_points(registry, monkeypatch):
    olmo2 = dataclasses.replace(OLMO, name="olmo2", model_types=("olmo2",))
    points = [
        FakeEntryPoint("olmo", OLMO),
        FakeEntryPoint("olmo2", lambda: [olmo2]),
        FakeEntryPoint("broken", ImportError("no module named fake_pkg")),
        FakeEntryPoint("clash", dataclasses.replace(LLAMA, name="clash")),
    ]
    groups = []
    monkeypatch.setattr(metadata, "entry_points", lambda group: groups.append(group) or points)
    monkeypatch.setattr(families, "_entry_points_loaded", False)
    with pytest.warns(UserWarning) as caught:
        assert registered("olmo") is OLMO and registered("olmo2") is olmo2
    assert groups == ["sortednet.families"]
    warned = sorted(str(w.message) for w in caught)
    assert warned[0].startswith("sortednet: skipped the family from entry point 'broken' (fake_pkg:broken)")
    assert "entry point 'clash'" in warned[1] and "already registered by family 'llama'" in warned[1]
    assert registered("llama") is LLAMA
    supported_model_types()
    assert groups == ["sortednet.families"]  # loaded once


# ---- declaring a family -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"projections": {"mlp.up": Projection(("ffnn",), "hidden")}},
            "family 'llama': projection 'mlp.up' out role 'ffnn' is not known; allowed: hidden, q, kv, ffn",
        ),
        (
            {"dims": ("depth", "width")},
            "family 'llama': dimension 'width' is not known; allowed: rank, depth, heads, ffn, hidden",
        ),
        (
            {"config_keys": {"depth": "n_layer", "heads": "n_head", "hidden": "n_embd"}},
            "family 'llama': config_keys lacks 'ffn'; it needs depth, heads, ffn, hidden",
        ),
        (
            {"unsupported": {"depth": "why not"}},
            "family 'llama': dimension 'depth' is in both dims and unsupported; give it in one",
        ),
        (
            {"layer_attrs": {"attn.n_head": "head"}},
            "family 'llama': layer_attrs role 'head' is not known; allowed: hidden, q, kv, ffn, heads, kv_heads",
        ),
    ],
)
def test_a_wrong_declaration_is_refused_in_one_line(change, message):
    with pytest.raises(ValueError) as err:
        dataclasses.replace(LLAMA, **change)
    assert str(err.value) == message


def test_from_dict_names_an_unknown_field():
    with pytest.raises(
        ValueError, match="family field 'heads_path' is not known; allowed: name, model_types"
    ):
        Family.from_dict({**LLAMA.to_dict(), "heads_path": "x"})


def test_check_family_refuses_dimensions_the_family_does_not_nest():
    with pytest.raises(ValueError, match=r"dimension 'heads' cannot be nested for model family 'phi3' \("):
        check_family("phi3", ["depth", "heads"])
