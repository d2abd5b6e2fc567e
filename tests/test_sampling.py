"""Samplers: determinism from (seed, step), coverage and the empirical distribution of each."""

from collections import Counter

import numpy as np
import pytest
from tiny import build

import sortednet as sn
from sortednet.sampling import SAMPLERS, make_sampler


@pytest.fixture(scope="module")
def space():
    nested = sn.nest(build("llama"), sn.NestingSpace(depth=[1, 2, 3, 4], ffn=[0.25, 0.5, 1.0], heads=[2, 4]))
    return nested.space  # 24 subnets, bound: ordered by exact parameter count


def counts(sampler, steps=3000):
    c = Counter()
    for step in range(steps):
        c.update(sampler.sample(step))
    return c


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_deterministic_from_seed_and_step(space, name):
    a, b = make_sampler(name, space, k=3, seed=7), make_sampler(name, space, k=3, seed=7)
    assert [a.sample(s, m) for s in range(20) for m in range(2)] == [
        b.sample(s, m) for s in range(20) for m in range(2)
    ]
    other = make_sampler(name, space, k=3, seed=8)
    if name != "all":
        assert [a.sample(s) for s in range(20)] != [other.sample(s) for s in range(20)]
        assert a.sample(0, 0) != a.sample(0, 1) or a.sample(1, 0) != a.sample(1, 1)


@pytest.mark.parametrize("name", ["uniform", "sandwich", "sorted", "budget"])
def test_draws_are_distinct_and_in_the_space(space, name):
    sampler = make_sampler(name, space, k=4, seed=0)
    for step in range(50):
        drawn = sampler.sample(step)
        assert len(drawn) == 4 == len(set(drawn)) and all(s in space for s in drawn)


def test_all_trains_every_subnet_largest_first(space):
    drawn = make_sampler("all", space).sample(0)
    assert set(drawn) == set(space.subnets()) and drawn[0] == space.largest


def test_all_has_no_limit_to_raise_by_hand():
    big = sn.NestingSpace(
        depth=[1, 2, 3, 4, 5], ffn=[0.25, 0.5, 0.75, 1.0], heads=[0.25, 0.5, 0.75, 1.0], hidden=[0.5, 1.0]
    )
    assert len(big) == 160 and len(make_sampler("all", big).sample(0)) == 160  # SortedNet trains 160 at once


def test_uniform_is_uniform(space):
    c = counts(make_sampler("uniform", space, k=2, seed=0))
    freq = np.array([c[s] for s in space.subnets()]) / (3000 * 2)
    assert len(c) == 24 and np.abs(freq - 1 / 24).max() < 0.012


def test_sandwich_always_has_both_ends_and_covers_the_middle(space):
    sampler = make_sampler("sandwich", space, k=4, seed=0)
    c = counts(sampler, 6000)
    assert c[space.largest] == c[space.smallest] == 6000
    middle = np.array([c[s] for s in space.subnets()[1:-1]]) / 6000
    assert np.abs(middle - 2 / 22).max() < 0.02
    assert all(sampler.sample(s)[0] == space.largest for s in range(10))


def test_sorted_follows_its_weighting(space):
    ordered = space.subnets()
    for weighting in ("uniform", "linear", "inverse", "geometric"):
        sampler = make_sampler("sorted", space, k=1, seed=1, weighting=weighting)
        c = counts(sampler, 6000)
        freq = np.array([c[s] for s in ordered]) / 6000
        assert np.abs(freq - sampler.probs).max() < 0.02, weighting
    linear = make_sampler("sorted", space, k=1, weighting="linear").probs
    assert linear[-1] == pytest.approx(24 * linear[0])


def test_budget_visits_every_cost_stratum_each_step(space):
    sampler = make_sampler("budget", space, k=3, seed=0)
    cost = np.log(space.costs())
    edges = np.linspace(cost.min(), cost.max(), 4)
    index = {s: i for i, s in enumerate(space.subnets())}
    for step in range(200):
        strata = sorted(
            min(int(np.searchsorted(edges, cost[index[s]], side="right") - 1), 2)
            for s in sampler.sample(step)
        )
        assert strata == [0, 1, 2]
    c = counts(sampler, 3000)
    assert len(c) == 24  # every subnet is reachable


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("nope", {}, r"sampler 'nope' is unknown; allowed: all, uniform, sandwich, sorted, budget"),
        ("uniform", {"k": 30}, r"sampler.k=30 is above 24; allowed: an int >= 1 and <= 24"),
        ("uniform", {"k": 0}, r"sampler.k=0 is below 1"),
        ("sandwich", {"k": 1}, r"sampler.k=1 is too small for sampler=sandwich"),
        ("sorted", {"weighting": "cubic"}, r"sampler.weighting='cubic' is unknown"),
    ],
)
def test_bad_sampler_settings(space, name, options, message):
    with pytest.raises(ValueError, match=message):
        make_sampler(name, space, **options)


def test_state_round_trip_and_mismatch(space):
    sampler = make_sampler("sorted", space, k=2, seed=3, weighting="linear")
    fresh = make_sampler("sorted", space, k=2, seed=0, weighting="linear")
    fresh.load_state_dict(sampler.state_dict())
    assert fresh.sample(5) == sampler.sample(5)
    with pytest.raises(ValueError, match="does not match the configured sampler"):
        make_sampler("uniform", space, k=2).load_state_dict(sampler.state_dict())
