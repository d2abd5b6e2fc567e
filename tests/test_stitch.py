"""Stitched models (sortednet.stitch): the space, least-squares stitching layers, exact anchors, one-file save and
load, and the one-line refusals of anchors that cannot be stitched. Tiny random ViT and LLaMA anchors."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T

import sortednet as sn
from sortednet.stitch import StitchConfig, StitchingLayer, fit_stitches
from sortednet.stitch.fit import hidden_states


def vit(hidden: int, layers: int, labels: int = 5, seed: int = 0) -> T.ViTForImageClassification:
    torch.manual_seed(seed)
    config = T.ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        num_labels=labels,
    )
    return T.ViTForImageClassification(config).eval()


def llama(hidden: int, layers: int, vocab: int = 64, head_dim: int = 8, seed: int = 0) -> T.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = T.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // head_dim,
        num_key_value_heads=max(1, hidden // head_dim // 2),
        head_dim=head_dim,
        intermediate_size=2 * hidden,
        tie_word_embeddings=True,
    )
    return T.LlamaForCausalLM(config).eval()


def images(n: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))}


def tokens(n: int = 4, seed: int = 1) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 64, (n, 12), generator=torch.Generator().manual_seed(seed))}


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def test_fast_to_slow_gives_twelve_block_anchors_as_many_networks_as_sn_net():
    infos = [("ti", 12, 192), ("s", 12, 384), ("b", 12, 768)]
    # SN-Net's DeiT-Ti/S/B count, not its members (stitch.mode=snnet: tests/test_stitch_sets.py)
    assert len(sn.StitchSpace(infos)) == 3 + 2 * 34


def test_space_is_the_sliding_window_ordered_by_exact_params():
    stitched = sn.stitch({"large": vit(32, 6), "small": vit(16, 4)})
    space = stitched.space
    assert [a.name for a in space.anchors] == ["small", "large"]  # ordered by size, whatever the given order
    # small cut after c (1..4), large resumes at r with |r - round(1.5 c)| <= 1, 1 <= r <= 6
    expected = {(c, r) for c in range(1, 5) for r in range(1, 7) if abs(r - round(c * 6 / 4)) <= 1}
    stitches = {(m.cut, m.resume) for m in space if not m.is_anchor}
    assert stitches == expected and len(space) == len(expected) + 2
    costs = space.costs()
    assert list(costs) == sorted(costs)
    assert str(space.largest) == "large" and str(space.smallest) == "small"
    two_way = sn.stitch({"large": vit(32, 6), "small": vit(16, 4)}, mode="two_way").space
    backwards = [m for m in two_way if not m.is_anchor and m.front == "large"]
    assert len(backwards) > 0 and len(two_way) == len(space) + len(backwards)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_num_params_counts_exactly_the_tensors_a_member_runs(lora_rank):
    stitched = sn.stitch({"small": vit(16, 4), "large": vit(32, 6)}, lora_rank=lora_rank)
    for member in stitched.space:
        stitched.zero_grad(set_to_none=True)
        with stitched.use(member):
            stitched(**images()).logits.sum().backward()
        used = sum(p.numel() for p in stitched.parameters() if p.grad is not None)
        if not member.is_anchor and lora_rank:  # the frozen least-squares weight runs without a gradient
            used += stitched.stitches[str(member)].weight.numel()
        assert stitched.num_params(member) == used, member
    assert stitched.num_params("small") == sum(p.numel() for p in stitched.anchors["small"].parameters())


@pytest.mark.parametrize("family", ["vit", "llama"])
def test_every_anchor_member_is_its_anchor_bit_for_bit(family):
    if family == "vit":
        anchors, inputs = {"s": vit(16, 4), "m": vit(32, 4, seed=1), "l": vit(48, 6, seed=2)}, images()
    else:
        anchors, inputs = {"s": llama(16, 3), "l": llama(32, 4, seed=1)}, tokens()
    originals = {n: copy.deepcopy(m) for n, m in anchors.items()}
    batches = [images(16, seed=s) if family == "vit" else tokens(8, seed=s) for s in range(2)]
    stitched = sn.stitch(anchors, calibration=batches)
    for name, original in originals.items():
        with stitched.use(name):
            assert torch.equal(logits(stitched, inputs), logits(original, inputs)), name
        assert torch.equal(logits(stitched.anchor(name), inputs), logits(original, inputs))
    for member in stitched.space:  # and every stitch runs, with the back anchor's output shape
        with stitched.use(member):
            out = logits(stitched, inputs)
        assert out.shape == logits(originals["l"], inputs).shape and torch.isfinite(out).all()


def test_least_squares_init_beats_random_init_on_held_out_activations():
    stitched = sn.stitch({"small": vit(16, 4), "large": vit(32, 4, seed=1)})
    random_layers = {n: copy.deepcopy(layer) for n, layer in stitched.stitches.items()}
    fit_stitches(stitched, [images(64, seed=s) for s in range(3)])
    held_out = images(32, seed=99)
    for member in stitched.space:
        if member.is_anchor:
            continue
        x = hidden_states(stitched, member.front, held_out, {member.cut})[member.cut]
        y = hidden_states(stitched, member.back, held_out, {member.resume})[member.resume]
        with torch.no_grad():
            fitted = (stitched.stitches[str(member)](x) - y).pow(2).mean()
            random = (random_layers[str(member)](x) - y).pow(2).mean()
        assert fitted < 0.5 * random, (member, float(fitted), float(random))


def test_lora_stitching_starts_at_the_least_squares_map_and_trains_only_the_update():
    layer = StitchingLayer(4, 6, rank=2)
    x = torch.randn(10, 4)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert not layer.weight.requires_grad and layer.lora_a.requires_grad and layer.bias.requires_grad


@pytest.mark.parametrize("family", ["vit", "llama"])
def test_save_then_load_gives_identical_outputs_for_every_member(tmp_path, family):
    if family == "vit":
        anchors, inputs = {"small": vit(16, 4), "large": vit(32, 6, seed=1)}, images()
    else:
        anchors, inputs = {"small": llama(16, 3), "large": llama(32, 4, seed=1)}, tokens()
    stitched = sn.stitch(anchors, mode="two_way", lora_rank=2)
    with torch.no_grad():
        for layer in stitched.stitches.values():
            layer.lora_b.normal_()  # a trained-looking update, so that the file must hold it
    stitched.metadata["note"] = "kept"
    stitched.save(tmp_path / "run.safetensors")
    back = sn.load(tmp_path / "run.safetensors")
    assert isinstance(back, sn.StitchedModel) and isinstance(back, sn.ManyInOne)
    assert back.space == stitched.space and back.metadata["note"] == "kept"
    assert back.space.subnets() == stitched.space.subnets()
    assert list(back.space.costs()) == list(stitched.space.costs())
    for member in stitched.space:
        with stitched.use(member), back.use(member):
            assert torch.equal(logits(stitched, inputs), logits(back, inputs)), member


def test_use_accepts_the_documented_spellings_and_refuses_others():
    stitched = sn.stitch({"small": vit(16, 4), "large": vit(32, 4, seed=1)})
    with stitched.use("stitch=small:2>large:2") as active:
        assert str(active.active) == "small:2>large:2"
    assert str(stitched.active) == "large"
    with pytest.raises(ValueError, match="not in the stitch space; allowed: an anchor"):
        stitched.activate("small:2>large:4")
    with pytest.raises(ValueError, match="FRONT:CUT>BACK:RESUME"):
        stitched.activate("small:two>large:2")


def test_a_mixed_decoder_stitch_refuses_a_kv_cache():
    stitched = sn.stitch({"small": llama(16, 3), "large": llama(32, 4, seed=1)})
    member = next(m for m in stitched.space if not m.is_anchor)
    with stitched.use(member), pytest.raises(ValueError, match="KV cache"):
        stitched(**tokens(), use_cache=True)


@pytest.mark.parametrize(
    "anchors, message",
    [
        (lambda: [vit(16, 4)], "anchors: 1 given; allowed: two or more"),
        (
            lambda: [vit(16, 4), llama(16, 3)],
            "anchor 'a1' is a LlamaForCausalLM, anchor 'a0' a ViTForImageClassification",
        ),
        (lambda: [vit(16, 4), vit(32, 4, labels=7)], "anchor 'a1': num_labels=7 differs from anchor 'a0'"),
        (lambda: [llama(16, 3), llama(32, 3, vocab=80)], "anchor 'a1': vocab_size=80 differs"),
        (lambda: [llama(16, 3), llama(32, 3, head_dim=16)], "anchor 'a1': head_dim=16 differs"),
        (lambda: [vit(16, 4), vit(32, 1)], "anchor 'a1': num_hidden_layers=1; allowed: >= 2"),
        (
            lambda: (
                [
                    T.BertModel(
                        T.BertConfig(
                            num_hidden_layers=2,
                            hidden_size=16,
                            num_attention_heads=2,
                            intermediate_size=8,
                            vocab_size=30,
                        )
                    )
                ]
                * 2
            ),
            "model_type='bert' cannot be stitched; allowed: vit, deit, llama",
        ),
        (
            lambda: [torch.nn.Linear(2, 2), vit(16, 4)],
            "anchor 'a0' is a Linear; allowed: transformers models",
        ),
    ],
)
def test_bad_anchors_are_refused_in_one_line_before_anything_changes(anchors, message):
    models = anchors()
    before = [type(getattr(getattr(m, "base_model", None), "layers", None)) for m in models]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        sn.stitch(models)
    assert "\n" not in str(err.value)
    assert [type(getattr(getattr(m, "base_model", None), "layers", None)) for m in models] == before


def test_bad_stitch_options_are_refused_in_one_line():
    with pytest.raises(
        ValueError, match="stitch.mode='slow_to_fast' is unknown; allowed: fast_to_slow, two_way"
    ):
        StitchConfig(mode="slow_to_fast")
    with pytest.raises(ValueError, match="stitch.window=0 is below 1"):
        StitchConfig(window=0)


def test_budget_groups_draw_every_cost_group_equally_often_whatever_its_size():
    from collections import Counter

    from sortednet.sampling import BudgetSampler

    space = sn.StitchSpace([("ti", 12, 192), ("s", 12, 384), ("b", 12, 768)])
    sampler = BudgetSampler(space, k=1, seed=0, groups=6)
    group_of = {space.subnets()[i]: g for g, members in enumerate(sampler.strata) for i in members}
    sizes = [len(s) for s in sampler.strata]
    assert len(sizes) == 6 and max(sizes) > 2 * min(sizes)  # groups of unequal size
    draws = [sampler.sample(step) for step in range(800)]
    assert all(len(d) == 1 for d in draws)
    counts = Counter(group_of[d[0]] for d in draws)
    assert all(90 <= counts[g] <= 180 for g in range(6)), counts  # 133 each expected
    assert sampler.sample(7) == BudgetSampler(space, k=1, seed=0, groups=6).sample(
        7
    )  # a function of the step
