"""The official stitch sets (stitch.mode=snnet, snnetv2) against lists derived here from the authors' rules, the
three-segment routes (zero-copy switching, outputs and params against the pieces run by hand, exact export),
stitching layers shared per position or per stitch, and LoRA's alpha / r scaling."""

from __future__ import annotations

import copy
from itertools import combinations

import pytest
import torch
from test_stitch import images, logits, vit
from tiny import assert_switching_copies_nothing

import sortednet as sn
from sortednet.stitch import StitchConfig, StitchingLayer
from sortednet.stitch.export import single_network
from sortednet.stitch.fit import hidden_states, stitch_statistics
from sortednet.stitch.layers import solve

DEIT = [("ti", 12, 192), ("s", 12, 384), ("b", 12, 768)]


def official_snnet(names: list[str], depth: int = 12, kernel: int = 2, stride: int = 1):
    """SN-Net's DeiT set as ziplab/SN-Net stitching_deit/utils.py builds it: `paired_stitching` gives (j, k) pairs
    of each window and the window's layer id; `get_stitch_configs` takes every combination of anchors and, with
    nearest_stitching, drops (0, 2) and (0, 1, 2); SNNet.forward runs front.blocks[0:j+1], the stitching layer,
    then back.blocks[k:]. Returns {(front, cut, back, resume) or (anchor,)} and {(front, cut, back, resume): layer}."""
    pairs, layer_of, layer = [], {}, -1
    i = 0
    while i < depth:
        ids = list(range(i, min(i + kernel, depth)))
        new = [(j, k) for j in ids for k in ids if (j, k) not in pairs]
        pairs += new
        if new:
            layer += 1
            layer_of.update(dict.fromkeys(new, layer))
        i += stride
    combos = [c for n in range(1, len(names) + 1) for c in combinations(range(len(names)), n)]
    combos = [c for c in combos if c not in ((0, 2), (0, 1, 2))]
    members, layers = set(), {}
    for combo in combos:
        if len(combo) == 1:
            members.add((names[combo[0]],))
            continue
        front, back = names[combo[0]], names[combo[1]]
        for j, k in pairs:
            members.add((front, j + 1, back, k))
            layers[(front, j + 1, back, k)] = (front, back, layer_of[(j, k)])
    return members, layers


def official_snnetv2(small: str, large: str, ds: int, dl: int):
    """SN-Netv2's set as ziplab/SN-Netv2 classification/snnet.py builds it: `get_stitch_configs_bidirection` (sl:
    [i, (i+1) dl//ds]; ls: [i, map(i)+1] for i < dl-1, odd i only when the depths differ, map = nearest-neighbour
    interpolation of range(ds) to dl; lsl and sls chain an ls and an sl whose second front is >= the first end,
    lsl skipping the sl of layer ds-1), the members `SNNetv2.all_cfgs` = anchors + sl_ids (front != 11, ie not
    after small's last block) + ls + lsl + sls; `selective_forward(begin, end)` runs blocks begin..end inclusive.
    Returns {segments: ((anchor, start, stop or None), ...)} and per member its layers ((direction, id), ...)."""
    ratio = dl // ds
    down = torch.nn.functional.interpolate(torch.arange(ds)[None, None].float(), dl).long().flatten().tolist()
    sl = [([i, (i + 1) * ratio], i) for i in range(ds)]
    ls = [([i, down[i] + 1], i // ratio) for i in range(dl - 1) if ds == dl or i % 2 == 1]
    lsl = [(a, b, la, lb) for a, la in ls for b, lb in sl if lb != ds - 1 and b[0] >= a[1]]
    sls = [(a, b, la, lb) for a, la in sl for b, lb in ls if b[0] >= a[1]]
    depth = {small: ds, large: dl}
    out = {((small, 0, None),): (), ((large, 0, None),): ()}
    for (front, end), lid in sl:
        if front != ds - 1:
            out[((small, 0, front + 1), (large, end, None))] = (("sl", lid),)
    for (front, end), lid in ls:
        out[((large, 0, front + 1), (small, end, None))] = (("ls", lid),)
    for names, routes in (((large, small, large), lsl), ((small, large, small), sls)):
        for (f1, e1), (f2, e2), l1, l2 in routes:
            assert e2 <= depth[names[2]]
            segments = ((names[0], 0, f1 + 1), (names[1], e1, f2 + 1), (names[2], e2, None))
            out[segments] = (("ls", l1), ("sl", l2)) if names[0] == large else (("sl", l1), ("ls", l2))
    return out


def test_snnet_mode_is_sn_nets_deit_set_and_its_shared_layers():
    space = sn.StitchSpace(DEIT, StitchConfig(mode="snnet"))
    expected, layers = official_snnet(["ti", "s", "b"])
    got = {(m.front,) if m.is_anchor else (m.front, m.cut, m.back, m.resume) for m in space}
    assert got == expected and len(space) == 71
    blocks = {len(range(0, m.cut)) + 12 - m.resume for m in space if not m.is_anchor}
    assert blocks == {12, 13, 14}  # |j - k| <= 1
    # the layers: the official layer ids partition the joins exactly as sortednet's layer names do
    ours = {(m.front, m.cut, m.back, m.resume): space.layer_keys(m)[0] for m in space if not m.is_anchor}
    pairs = {(ours[key], layers[key]) for key in ours}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == 22  # 11 per pair
    per_stitch = sn.StitchSpace(DEIT, StitchConfig(mode="snnet", share="stitch"))
    assert len(per_stitch.layers()) == 68 and per_stitch.subnets() == space.subnets()


@pytest.mark.parametrize("depths", [(12, 12), (12, 24)])
def test_snnetv2_mode_is_sn_netv2s_set_with_its_routes_and_layers(depths):
    ds, dl = depths
    space = sn.StitchSpace([("s", ds, 384), ("l", dl, 768)], StitchConfig(mode="snnetv2"))
    expected = official_snnetv2("s", "l", ds, dl)
    got = {tuple((n, a, b) for n, a, b in m.segments): m for m in space}
    assert set(got) == set(expected)
    assert len(space) == (134 if ds == dl else len(expected))
    kinds = {len(m.segments) for m in space}
    assert kinds == {1, 2, 3} and sum(len(m.segments) == 3 for m in space) == sum(
        len(s) == 3 for s in expected
    )
    if ds == dl:  # 11 + 11 stitches, 55 + 55 routes
        assert sum(len(m.segments) == 3 for m in space) == 110
    # one layer per (direction, cut), shared by the two-segment stitches and the routes, as in SNNetv2
    names = {
        (layer, key)
        for seg, m in got.items()
        for layer, key in zip(expected[seg], space.layer_keys(m), strict=True)
    }
    assert len(names) == len({a for a, _ in names}) == len({b for _, b in names}) == len(space.layers())


def test_snnetv2_for_deit_ti_s_b_is_the_union_of_its_two_pairs():
    three = sn.StitchSpace(DEIT, StitchConfig(mode="snnetv2"))
    pairs = [sn.StitchSpace(DEIT[i : i + 2], StitchConfig(mode="snnetv2")) for i in range(2)]
    assert {str(m) for m in three} == {str(m) for p in pairs for m in p}
    assert len(three) == 3 + 2 * 132


def test_official_modes_refuse_what_their_rules_cannot_build_in_one_line():
    with pytest.raises(
        ValueError, match=r"^stitch.mode=snnet: anchors s \(4 blocks\) and l \(6\) differ in depth"
    ):
        sn.StitchSpace([("s", 4, 16), ("l", 6, 32)], StitchConfig(mode="snnet"))
    with pytest.raises(ValueError, match=r"^stitch.mode=snnetv2: anchor s has 6 blocks, more than"):
        sn.StitchSpace([("s", 6, 16), ("l", 4, 32)], StitchConfig(mode="snnetv2"))
    with pytest.raises(ValueError, match=r"^stitch.share='window' is unknown; allowed: stitch, position"):
        StitchConfig(share="window")


def routes_model(**options) -> sn.StitchedModel:
    anchors = {"small": vit(16, 4), "large": vit(32, 4, seed=1)}
    return sn.stitch(anchors, [images(32, seed=s) for s in range(2)], mode="snnetv2", **options)


def by_hand(stitched: sn.StitchedModel, member: sn.Stitch, x: torch.Tensor) -> torch.Tensor:
    """The route's pieces run one after another: front's embeddings, each segment's blocks with the stitching
    layer between, the host's final norm and classifier."""
    models = {n: stitched.anchor(n) for n in stitched.anchors}
    layers = [stitched.stitches[key] for key in stitched.space.layer_keys(member)]
    with torch.no_grad():
        h = models[member.front].vit.embeddings(x)
        for i, (name, start, stop) in enumerate(member.segments):
            h = layers[i - 1](h) if i else h
            for block in models[name].vit.layers[start:stop]:
                out = block(h)
                h = out[0] if isinstance(out, tuple) else out
        host = models[member.host]
        return host.classifier(host.vit.layernorm(h)[:, 0])


@pytest.mark.parametrize("spelling", ["small:1>large:1-3>small:3", "large:2>small:2-3>large:3"])
def test_a_route_runs_its_three_segments_switching_copies_nothing_and_counts_its_params(spelling):
    stitched = routes_model(lora_rank=2)
    member = stitched.space.normalize(spelling)
    assert len(member.segments) == 3 and str(member) == spelling
    assert_switching_copies_nothing(stitched)
    x = images()["pixel_values"]
    with stitched.use(member):
        torch.testing.assert_close(logits(stitched, {"pixel_values": x}), by_hand(stitched, member, x))
        blocks = stitched._lists[member.host].active
    expected = [stitched._lists[n].every_layer()[a:b] for n, a, b in member.segments]
    layers = [stitched.stitches[k] for k in stitched.space.layer_keys(member)]
    assert [id(b) for b in blocks] == [
        id(b) for b in (*expected[0], layers[0], *expected[1], layers[1], *expected[2])
    ]
    pieces = torch.nn.ModuleList(
        [stitched.anchors[member.front].vit.embeddings, *blocks, stitched.anchors[member.host].vit.layernorm]
        + [stitched.anchors[member.host].classifier]
    )
    assert stitched.num_params(member) == sum(p.numel() for p in pieces.parameters())


def test_stitches_both_ways_and_routes_export_exactly(tmp_path):
    stitched = routes_model(lora_rank=2)
    with torch.no_grad():
        for layer in stitched.stitches.values():
            layer.lora_b.normal_()
    x = images()
    for member in [
        "small:2>large:2",
        "large:1>small:1",
        "small:1>large:1-3>small:3",
        "large:1>small:1-2>large:2",
    ]:
        single = single_network(stitched, member)
        (alone,) = single.space.subnets()
        assert single.num_params(alone) == stitched.num_params(member)
        single.save(tmp_path / "one.safetensors")
        back = sn.load(tmp_path / "one.safetensors")
        with stitched.use(member), back.use(alone):
            assert torch.equal(logits(stitched, x), logits(back, x)), member


def test_shared_layers_start_at_the_mean_of_their_positions_least_squares_maps():
    anchors = {"small": vit(16, 4), "large": vit(32, 4, seed=1)}
    batches = [images(32, seed=s) for s in range(2)]
    shared = sn.stitch(copy.deepcopy(anchors), batches, mode="snnet")
    own = sn.stitch(copy.deepcopy(anchors), batches, mode="snnet", share="stitch")
    assert (
        shared.space.subnets() == own.space.subnets()
        and len(shared.stitches) == 3
        and len(own.stitches) == 10
    )
    stats = stitch_statistics(own, batches)
    for key, joins in shared.space.layer_joins().items():
        mean = torch.stack([solve(*stats[str(j)][:2], 1e-4) for j in joins]).mean(0)
        torch.testing.assert_close(shared.stitches[key].weight, mean[:-1].T.float())
        for j in joins:  # per stitch: each join its own solution
            torch.testing.assert_close(own.stitches[str(j)].bias, stats_solution(stats, j)[-1].float())
    assert len(shared.space.layer_joins()["small>large@0"]) == 4  # (0,0), (0,1), (1,0), (1,1)
    # a shared layer is one module: a step on one stitch moves the other stitches of its position
    a, b = "small:1>large:0", "small:2>large:1"
    assert shared.space.layer_keys(shared.space.normalize(a)) == shared.space.layer_keys(
        shared.space.normalize(b)
    )
    assert shared.num_params(a) - own.num_params(a) == 0
    total = sum(p.numel() for p in shared.stitches.parameters())
    assert total * 10 == sum(p.numel() for p in own.stitches.parameters()) * 3


def stats_solution(stats, join):
    return solve(*stats[str(join)][:2], 1e-4)


def test_resume_at_block_zero_is_fitted_to_the_embeddings_output():
    stitched = sn.stitch({"small": vit(16, 4), "large": vit(32, 4, seed=1)}, mode="snnet", share="stitch")
    x = images(16)
    states = hidden_states(stitched, "large", x, {0, 2})
    with torch.no_grad():
        emb = stitched.anchors["large"].vit.embeddings(x["pixel_values"])
    assert torch.equal(states[0], emb) and states[2].shape == emb.shape


def test_lora_update_is_scaled_by_alpha_over_rank_as_sn_netv2():
    layer = StitchingLayer(4, 6, rank=4, alpha=1.0)
    with torch.no_grad():
        layer.lora_b.normal_()
    x = torch.randn(3, 4)
    plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    update = x @ layer.lora_a.T @ layer.lora_b.T
    torch.testing.assert_close(layer(x), plain + update / 4)
    torch.testing.assert_close(layer.dense_weight(), layer.weight + layer.lora_b @ layer.lora_a / 4)
    stitched = routes_model(lora_rank=8, lora_alpha=2.0)
    assert {layer.scaling for layer in stitched.stitches.values()} == {0.25}
    # a file written before lora_alpha existed trained an unscaled update: it loads with alpha = r
    assert StitchConfig.from_dict({"mode": "two_way", "lora_rank": 8}).lora_scaling == 1.0
