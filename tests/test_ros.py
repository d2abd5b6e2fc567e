"""sampler=ros (SN-Netv2's resource-constrained sampling): groups by a cost gap as the authors' code groups by
FLOPs, or by a count of groups; a group drawn uniformly, then a member; FLOPs measured on the built model; the
groups kept by a resume; one-line refusals."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from test_stitch import vit

import sortednet as sn
from sortednet.sampling import BudgetSampler, GroupSampler
from sortednet.stitch import StitchConfig
from sortednet.train.config import check_latency_cost
from sortednet.train.costs import measure_costs

DEIT = [("ti", 12, 192), ("s", 12, 384), ("b", 12, 768)]


def official_groups(costs: dict[int, float], gap: float) -> list[list[int]]:
    """`group_subnets_by_flops` (ziplab/SN-Netv2, classification/utils.py) as read: configurations sorted by cost;
    one starts a new group when its cost differs from the current group's first by more than the gap."""
    groups, current, first = [], [], 0.0
    for cfg, cost in sorted(costs.items(), key=lambda item: item[1]):
        if abs(first - cost) > gap:
            if current:
                groups.append(sorted(current))
            current, first = [cfg], cost
        else:
            current.append(cfg)
    return groups + ([sorted(current)] if current else [])


def test_gap_groups_are_the_authors_flops_groups():
    space = sn.StitchSpace(DEIT[1:], StitchConfig(mode="snnetv2"))
    rng = np.random.default_rng(0)
    costs = rng.uniform(4.6e9, 17.6e9, size=len(space))  # DeiT-S to DeiT-B FLOPs
    sampler = GroupSampler(space, seed=0, cost="flops", gap=1e9, costs=costs)
    expected = official_groups(dict(enumerate(costs)), 1e9)
    got = [sorted(space.subnets().index(m) for m in g) for g in sampler.group_members()]
    assert got == expected and 8 <= len(got) <= 14


def test_a_group_is_drawn_uniformly_then_a_member_whatever_the_groups_sizes():
    space = sn.StitchSpace(DEIT, StitchConfig(mode="snnet"))
    sampler = GroupSampler(space, k=1, seed=3, cost="params", groups=5)
    sizes = [len(g) for g in sampler.group_members()]
    assert len(sizes) == 5 and max(sizes) > 2 * min(sizes)
    group_of = {m: g for g, members in enumerate(sampler.group_members()) for m in members}
    draws = [sampler.sample(step) for step in range(1000)]
    assert all(len(d) == 1 for d in draws)
    counts = Counter(group_of[d[0]] for d in draws)
    assert all(150 <= counts[g] <= 250 for g in range(5)), counts  # 200 each expected
    assert sampler.sample(11) == GroupSampler(space, k=1, seed=3, cost="params", groups=5).sample(11)
    two = GroupSampler(space, k=2, seed=0, cost="params", groups=5)
    assert all(group_of[a] != group_of[b] for a, b in (two.sample(s) for s in range(50)))


def stitched_pair() -> sn.StitchedModel:
    return sn.stitch({"small": vit(16, 4), "large": vit(32, 4, seed=1)}, mode="snnetv2")


class FewDigits:
    """What measure_costs reads of a data module: a training set, its seed and batch size."""

    def __init__(self) -> None:
        x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        self.train_set = [{"pixel_values": x[i], "labels": torch.tensor(i % 5)} for i in range(8)]
        self.seed, self.batch_size, self.collate_fn = 0, 4, None


def test_flops_are_measured_on_the_built_model_and_a_resume_keeps_the_groups():
    stitched = stitched_pair()
    sampler = GroupSampler(stitched.space, seed=0, cost="flops", groups=4)
    with pytest.raises(RuntimeError, match="groups by cost=flops, not measured yet"):
        sampler.sample(0)
    measure_costs(stitched, sampler, FewDigits())
    flops = sampler.member_costs
    assert flops["small"] < flops["small:2>large:2"] < flops["large"]
    assert flops["small:1>large:1-3>small:3"] < flops["large:1>small:1-3>large:3"]
    state = sampler.state_dict()
    assert state["grouped"] and sum(len(g) for g in state["grouped"]) == len(stitched.space)
    again = GroupSampler(stitched.space, seed=0, cost="flops", groups=4, costs=[1.0] * len(stitched.space))
    again.load_state_dict(state)
    assert again.group_members() == sampler.group_members()
    assert [again.sample(s) for s in range(20)] == [sampler.sample(s) for s in range(20)]


def test_the_budget_sampler_strata_follow_measured_costs():
    space = sn.StitchSpace(DEIT, StitchConfig(mode="snnet"))
    reversed_costs = {m: 1.0 / (i + 1) for i, m in enumerate(space.subnets())}
    sampler = BudgetSampler(space, k=2, seed=0, cost="flops").set_costs(reversed_costs)
    assert (
        sampler.strata[0][0] > sampler.strata[-1][0]
    )  # the cheapest stratum now holds the largest-param members


@pytest.mark.parametrize(
    "options, message",
    [
        ({"gap": 1e9, "groups": 4}, r"^sampler.gap=1000000000.0 with sampler.groups=4; allowed: one of them"),
        ({"groups": 4, "cost": "macs"}, r"^sampler.cost='macs' is unknown; allowed: params, flops, latency"),
        ({"gap": -1.0}, r"^sampler.gap=-1.0 is below 0"),
    ],
)
def test_bad_ros_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        GroupSampler(sn.StitchSpace(DEIT), **options)


def test_latency_is_refused_on_several_devices():
    sampler = GroupSampler(sn.StitchSpace(DEIT), cost="latency", groups=4)
    check_latency_cost(sampler, {"accelerator": "cpu", "devices": 1, "num_nodes": 1})
    with pytest.raises(ValueError, match=r"^sampler.cost=latency with trainer.devices=2 trainer.num_nodes=1"):
        check_latency_cost(sampler, {"accelerator": "gpu", "devices": 2, "num_nodes": 1})
    with pytest.raises(ValueError, match="no cost for"):
        sampler.set_costs({"ti": 1.0})
