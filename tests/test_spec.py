"""Subnet and NestingSpace: parsing, validation, ordering, membership (no model needed)."""

import numpy as np
import pytest

from sortednet import NestingSpace, Subnet


@pytest.mark.parametrize("text", ["depth=8,ffn=0.5,heads=6", "depth=12", "ffn=1.0", "hidden=0.25,rank=16"])
def test_subnet_parse_round_trips(text):
    subnet = Subnet.parse(text)
    assert Subnet.parse(str(subnet)) == subnet


def test_subnet_canonical_order_and_types():
    subnet = Subnet.parse("ffn=0.5, heads=6 ,depth=8")
    assert str(subnet) == "depth=8,heads=6,ffn=0.5"
    assert isinstance(subnet["depth"], int) and isinstance(subnet["ffn"], float)
    assert subnet == Subnet(depth=8, heads=6, ffn=0.5)
    assert hash(subnet) == hash(Subnet(depth=8, heads=6, ffn=0.5))


@pytest.mark.parametrize(
    "text, message",
    [
        ("depth=0", r"depth=0 is below 1"),
        ("ffn=0.0", r"ffn=0.0 is outside \(0, 1\]"),
        ("ffn=1.5", r"ffn=1.5 is outside \(0, 1\]"),
        ("ffn=-0.5", r"ffn=-0.5 is outside"),
        ("width=3", r"unknown dimension 'width'; allowed: depth, hidden, heads, ffn, rank, channels"),
        ("depth", r"is not dim=value"),
        ("depth=abc", r"depth='abc' is not a number"),
        ("depth=2,depth=3", r"gives 'depth' twice"),
    ],
)
def test_subnet_bad_values_fail_with_one_line(text, message):
    with pytest.raises(ValueError, match=message) as err:
        Subnet.parse(text)
    assert "\n" not in str(err.value)


def test_space_basics():
    space = NestingSpace(depth=[12, 6], ffn=[0.25, 0.5, 1.0], heads=[6, 12])
    assert len(space) == 12
    assert space.values["depth"] == (6, 12)
    assert str(space.largest) == "depth=12,heads=12,ffn=1.0"
    assert str(space.smallest) == "depth=6,heads=6,ffn=0.25"
    assert "depth=6,ffn=0.5,heads=12" in space
    assert "depth=7,ffn=0.5,heads=12" not in space
    assert "rank=4" not in space
    subnets = space.subnets()
    assert len(set(subnets)) == 12 and subnets[0] == space.smallest and subnets[-1] == space.largest
    assert np.all(np.diff(space.costs()) >= 0)


def test_unspecified_dimension_means_full_size():
    space = NestingSpace(depth=[6, 12], ffn=[0.5, 1.0])
    assert space.normalize("depth=6") == Subnet(depth=6, ffn=1.0)
    with pytest.raises(ValueError, match=r"subnet ffn=full size is not in the nesting space; allowed: 0.5"):
        NestingSpace(depth=[6], ffn=[0.5]).normalize("depth=6")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth=[]), r"depth=\[\] is empty"),
        (dict(ffn=[0.5, 768]), r"mixes fractions and absolute sizes"),
        (dict(ffn=[0.0, 1.0]), r"ffn=0.0 is outside \(0, 1\]"),
        (dict(heads=[1.2]), r"heads=1.2 is outside"),
        (dict(), r"nesting space is empty"),
        (dict(width=[1]), r"unknown dimension 'width'"),
    ],
)
def test_space_bad_values_fail_with_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NestingSpace(**kwargs)


def test_space_parse_and_dict_round_trip():
    space = NestingSpace.parse("depth=6|12,ffn=0.5|1.0")
    assert space == NestingSpace(depth=[6, 12], ffn=[0.5, 1.0])
    assert NestingSpace.from_dict(space.to_dict()) == space


def test_large_space_enumerates_orders_and_samples_without_models():
    space = NestingSpace(
        depth=list(range(1, 13)), ffn=[i / 16 for i in range(1, 17)], heads=list(range(1, 13))
    )
    subnets = space.subnets()
    assert len(subnets) == len(space) == 12 * 16 * 12 == len(set(subnets))
    costs = space.costs()
    assert np.all(np.diff(costs) >= 0)
    drawn = space.sample(1000, generator=0)
    assert len(drawn) == 1000 and all(s in space for s in drawn[:50])
    assert space.sample(5, generator=3) == space.sample(5, generator=3)
