"""Importance reordering: the function is unchanged, units really sort, kv groups stay whole, small subnets gain."""

import json

import pytest
import torch
from tiny import BUILDERS, FAMILIES, build, family, inputs, output

import sortednet as sn
from sortednet.families import family_for
from sortednet.importance import SCORERS, _order
from sortednet.permute import sites

METHODS = ["activation", "magnitude", "taylor"]
ALL_DIMS = ("ffn", "heads", "hidden")


def is_decoder(name):
    return type(BUILDERS[name]()).__name__.endswith(("LMHeadModel", "ForCausalLM"))


def calibration(name, n=3):
    batches = [inputs(name, seed=10 + i) for i in range(n)]
    if is_decoder(name):
        for b in batches:
            b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)
    elif name != "bert_base":
        g = torch.Generator().manual_seed(0)
        for b in batches:
            b["labels"] = torch.randint(0, 3, (len(next(iter(b.values()))),), generator=g)
    return batches


def output_loss(model, batch):  # BertModel has no loss of its own
    return output(model, batch).float().pow(2).mean()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FAMILIES)
def test_reorder_keeps_the_function(name, method):
    model, batch = build(name), inputs(name)
    with torch.no_grad():
        want = output(model, batch)
    loss = output_loss if name == "bert_base" else None
    dims = [d for d in ALL_DIMS if d in family(name).dims]  # hidden only where the family nests it
    record = sn.reorder(model, calibration(name), method=method, dims=dims, loss=loss)
    perms = record["permutations"]
    layer_dims = [d for d in ("ffn", "heads") if d in dims]
    want_groups = {f"layers.{i}.{d}" for i in range(4) for d in layer_dims}
    assert set(perms) == want_groups | ({"hidden"} if "hidden" in dims else set())
    assert any(p != sorted(p) for p in perms.values())
    assert json.loads(json.dumps(record)) == record
    if name == "bert_base":  # no head: the hidden states come out in the new channel order
        want = want[..., perms["hidden"]]
    with torch.no_grad():
        got = output(model, batch)
    assert (got - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_scores_are_sorted_after_reorder(name, method):
    model = build(name)
    batches = calibration(name)
    sn.reorder(model, batches, method=method, dims=ALL_DIMS)
    groups = sites(model, family_for(model.config), ALL_DIMS)
    group_size = 2 if name == "llama" else 1
    scores = SCORERS[method](model.eval(), groups, batches, lambda m, b: m(**b).loss, group_size)
    for key, (unit, kv) in scores.items():
        if kv is None:
            assert torch.all(unit[:-1] >= unit[1:] - 1e-6 * unit.abs().max()), key
        else:
            assert torch.all(kv[:-1] >= kv[1:] - 1e-6 * kv.abs().max()), key
            within = unit.view(-1, group_size)
            assert torch.all(within[:, :-1] >= within[:, 1:] - 1e-6 * unit.abs().max()), key
        assert torch.equal(_order(unit, kv, group_size), torch.arange(len(unit))) or method == "taylor", key


def test_grouped_query_attention_keeps_kv_groups_whole():
    """Heads scored 2, 2.5, 1, 4 in kv groups {0, 1}, {2, 3}: the group {2, 3} (5) goes first, then its best head;
    a plain per-head sort would give 3, 1, 0, 2 and split both groups."""
    model, batch = build("llama"), inputs("llama")
    head_dim = 8
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                proj.weight.fill_(0.05)
            for h, share in enumerate([2.0, 2.5, 1.0, 4.0]):
                attn.o_proj.weight[:, h * head_dim : (h + 1) * head_dim] = 0.05 * share**0.5
        old = {k: v.clone() for k, v in model.state_dict().items()}
        want = output(model, batch)
    record = sn.reorder(model, method="magnitude", dims=["heads"])
    assert record["permutations"]["layers.0.heads"] == [3, 2, 1, 0]
    new = model.state_dict()
    k_rows = torch.cat([old["model.layers.0.self_attn.k_proj.weight"][g * 8 : (g + 1) * 8] for g in (1, 0)])
    assert torch.equal(new["model.layers.0.self_attn.k_proj.weight"], k_rows)
    o_cols = torch.cat(
        [old["model.layers.0.self_attn.o_proj.weight"][:, h * 8 : (h + 1) * 8] for h in (3, 2, 1, 0)], 1
    )
    assert torch.equal(new["model.layers.0.self_attn.o_proj.weight"], o_cols)
    with torch.no_grad():
        assert (output(model, batch) - want).abs().max().item() <= 1e-5


def skewed(name):
    """In every layer the second half of the FFN neurons and of the heads (one whole kv group) carry almost all
    of the output, in activations and in weights; the last two layers barely change the residual stream (so
    that the depth cut, the same with and without reordering, does not hide the rest)."""
    model = build(name)
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            mlp, attn = layer.mlp, layer.self_attn
            for weight, axis in (
                (mlp.up_proj.weight, 0),
                (mlp.down_proj.weight, 1),
                (attn.v_proj.weight, 0),
                (attn.o_proj.weight, 1),
            ):
                half = weight.shape[axis] // 2
                weight.narrow(axis, 0, half).mul_(0.1)
                weight.narrow(axis, half, half).mul_(2.0)
            if i >= 2:
                mlp.down_proj.weight *= 0.01
                attn.o_proj.weight *= 0.01
    return model


@pytest.mark.parametrize("method", METHODS)
def test_reorder_brings_the_smallest_subnet_closer_to_the_full_model(method):
    space = sn.NestingSpace(depth=[2, 4], ffn=[0.25, 0.5, 1.0], heads=[2, 4])
    batch = inputs("llama", batch=4, seq=12, seed=5)
    distances = {}
    for reordered in (False, True):
        model = skewed("llama")
        if reordered:
            sn.reorder(model, calibration("llama"), method=method)
        nested = sn.nest(model, space)
        with torch.no_grad():
            full = output(nested, batch)
            with nested.use(space.smallest):
                small = output(nested, batch)
        distances[reordered] = ((small - full).norm() / full.norm()).item()
    assert distances[True] < 0.8 * distances[False], distances


def test_record_replays_inverts_and_goes_into_the_checkpoint(tmp_path):
    model, fresh, original = build("gpt2"), build("gpt2"), build("gpt2").state_dict()
    record = sn.reorder(model, calibration("gpt2"), method="activation", dims=ALL_DIMS)
    record = json.loads(json.dumps(record))
    sn.apply_permutation(fresh, record)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # tied weights permuted once, still tied
    sn.apply_permutation(fresh, record, inverse=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in original.items())
    nested = sn.nest(model, sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0]))
    nested.metadata["permutation"] = record
    nested.save(tmp_path / "run.safetensors")
    assert sn.read_metadata(tmp_path / "run.safetensors")["permutation"] == record
    assert sn.load(tmp_path / "run.safetensors").metadata["permutation"] == record


@pytest.mark.parametrize("name", ["gpt2", "llama", "vit"])
def test_reordering_a_nested_model_equals_reordering_before_nest(name):
    """The one-line form: reorder(nested, ...) permutes what the space nests and records it in the metadata."""
    space = sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4], hidden=[0.5, 1.0])
    batches = calibration(name)
    before = build(name)
    record = sn.reorder(before, batches, dims=space.dims)
    assert record["dims"] == ["ffn", "heads", "hidden"]
    before = sn.nest(before, space)
    nested = sn.nest(build(name), space)
    assert sn.reorder(nested, batches) == record == nested.metadata["permutation"]
    batch = inputs(name)
    with torch.no_grad():
        for subnet in (space.largest, "depth=2,ffn=0.5,heads=2,hidden=0.5"):
            with nested.use(subnet), before.use(subnet):
                assert torch.equal(output(nested, batch), output(before, batch))
    with pytest.raises(ValueError, match=r"already reordered"):
        sn.reorder(nested, batches)


def test_block_influence_finds_a_layer_that_does_nothing():
    model, batches = build("llama"), calibration("llama")
    with torch.no_grad():  # layer 2 adds nothing to the residual stream
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    influence = sn.block_influence(model, batches)
    assert len(influence) == 4 and influence[2] < 1e-6
    assert all(0 < v <= 2 for i, v in enumerate(influence) if i != 2)
    nested = sn.nest(model, sn.NestingSpace(depth=[2, 4]))
    with nested.use("depth=2"):
        assert sn.block_influence(nested, batches) == pytest.approx(influence)
        assert nested.state.depth == 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: sn.reorder(m, [], method="random"), r"method='random' is unknown; allowed: activation"),
        (lambda m: sn.reorder(m, [], method="activation"), r"needs calibration batches and got none"),
        (lambda m: sn.reorder(m, method="magnitude", dims=["width"]), r"unknown dimension 'width'"),
        (lambda m: sn.reorder(m, method="magnitude", dims=["channels"]), r"'channels' cannot be reordered"),
        (
            lambda m: sn.reorder(m, [inputs("bert_base")], method="taylor"),
            r"needs a loss and BertModel returned",
        ),
        (
            lambda m: sn.reorder(sn.nest(m, sn.NestingSpace(rank=[0.5, 1.0])), method="magnitude"),
            r"cannot permute a model nested with rank",
        ),
        (
            lambda m: sn.reorder(sn.nest(m, sn.NestingSpace(depth=[2, 4])).model, method="magnitude"),
            r"takes the NestedModel itself or a plain model, not nested.model",
        ),
        (
            lambda m: sn.apply_permutation(m, {"permutations": {"layers.0.ffn": [0, 0, 1]}}),
            r"'layers.0.ffn' is not a permutation of 0..47",
        ),
        (
            lambda m: sn.apply_permutation(m, {"permutations": {"layers.9.ffn": list(range(48))}}),
            r"'layers.9.ffn', which BertModel does not have",
        ),
    ],
)
def test_bad_input_is_refused_in_one_line(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call(build("bert_base"))
    assert "\n" not in str(err.value)


def test_a_permutation_that_splits_a_kv_group_is_refused():
    with pytest.raises(
        ValueError, match=r"splits a grouped-query attention group; allowed: whole groups of 2"
    ):
        sn.apply_permutation(build("llama"), {"permutations": {"layers.0.heads": [1, 2, 0, 3]}})


@pytest.mark.parametrize("name", [n for n in FAMILIES if "hidden" not in family(n).dims])
def test_hidden_is_reordered_only_where_the_family_nests_it(name):
    model = build(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'hidden' cannot be reordered for family") as err:
        sn.reorder(model, method="magnitude", dims=["ffn", "hidden"])
    assert "\n" not in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # refused before any change


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_reorder_with_per_depth_heads_keeps_every_depth(name):
    """With head='per_depth' every depth's own head copy reads the permuted hidden channels too."""
    model = build(name)
    if name == "llama":
        torch.manual_seed(0)
        model = type(model)(type(model.config)(**{**model.config.to_dict(), "tie_word_embeddings": False}))
    space = sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4], hidden=[0.5, 1.0])
    nested = sn.nest(model.eval(), space, head="per_depth")
    batch = inputs(name)
    with torch.no_grad():
        want = {s: output_at(nested, s, batch) for s in ("depth=2", "depth=4")}
    sn.reorder(nested, calibration(name), method="activation")
    with torch.no_grad():
        for subnet, before in want.items():
            assert (output_at(nested, subnet, batch) - before).abs().max().item() <= 1e-5, subnet


def output_at(nested, subnet, batch):
    with nested.use(subnet):
        return output(nested, batch)
