"""Maestro rank nesting: factorisation from the SVD, exact export, cuts, and the paper's SVD-recovery claim."""

import numpy as np
import pytest
import torch
from tiny import FAMILIES, build, exports_fewer_heads, inputs, output, space
from torch import nn

import sortednet as sn
from sortednet.layers import LowRankLinear, NestState
from sortednet.lowrank import Shrinker, group_lasso, importance, sample_layer_ranks

SPACE = dict(depth=[2, 4], rank=[0.25, 0.5, 1.0], heads=[2, 4])


@pytest.mark.parametrize("name", FAMILIES)
def test_full_rank_reproduces_the_original_and_subnets_extract_exactly(name):
    model = build(name)
    batch = inputs(name)
    with torch.no_grad():
        ref = output(model, batch)
    nested = sn.nest(model, space(name, **SPACE))
    layers = nested.model.base_model.get_submodule(nested.family.layers)
    modules = nested.low_rank_modules()
    assert len(modules) == 4 * len(nested.family.layer_projections(layers[0]))
    assert all(m.base_layer.weight is None for m in modules.values())
    with torch.no_grad():
        assert (output(nested, batch) - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert nested.num_params(nested.space.largest) == sum(p.numel() for p in build(name).parameters())
    for subnet in nested.space.subnets()[::3]:
        if not exports_fewer_heads(name) and nested.sizes(subnet)["heads"] < 4:
            continue
        small = nested.extract(subnet)
        with torch.no_grad(), nested.use(subnet):
            want = output(nested, batch)
            assert (output(small, batch) - want).abs().max().item() <= 1e-5, subnet
        # params count each factorised projection as min(r (out + in), out x in)
        dense, factored = 0, 0
        with nested.use(subnet):
            for layer in list(layers):
                for path in nested.family.layer_projections(layer):
                    m = layer.get_submodule(path)
                    out, fan_in = sum(m._block_widths()), getattr(nested.state, m.in_role)
                    dense += out * fan_in
                    factored += min(m.rank() * (out + fan_in), out * fan_in)
        assert nested.num_params(subnet) == small.num_parameters() - dense + factored


def test_rank_targets_pick_projections_by_pattern():
    nested = sn.nest(build("llama"), sn.NestingSpace(rank=[8, 16, 32], rank_targets=["mlp.*"]))
    names = sorted({n.split(".", 3)[-1] for n in nested.low_rank_modules()})
    assert names == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj"]
    assert nested.full["rank"] == 32
    with pytest.raises(
        ValueError, match=r"rank_targets=\['attn.\*'\] match no projection of model family 'llama'"
    ):
        sn.nest(build("llama"), sn.NestingSpace(rank=[8], rank_targets=["attn.*"]))
    with pytest.raises(ValueError, match="rank_targets is set but rank is not"):
        sn.NestingSpace(depth=[2], rank_targets=["mlp.*"])
    with pytest.raises(ValueError, match=r"rank=64 exceeds the model's 32 rank"):
        sn.nest(build("llama"), sn.NestingSpace(rank=[8, 64]))


def test_absolute_ranks_cap_at_each_layer():
    nested = sn.nest(build("llama"), sn.NestingSpace(rank=[4, 32]))
    with nested.use("rank=4"):
        assert {m.rank() for m in nested.low_rank_modules().values()} == {4}
    ranks = {m.full_rank for m in nested.low_rank_modules().values()}
    assert ranks == {16, 32}  # k/v projections are 16 x 32
    with nested.use("rank=32"):
        assert {m.rank() for m in nested.low_rank_modules().values()} == {16, 32}


def test_rank_with_hidden_depth_heads_and_ffn_together(tmp_path):
    space = sn.NestingSpace(depth=[2, 4], hidden=[16, 32], heads=[2, 4], ffn=[0.5, 1.0], rank=[0.25, 1.0])
    nested = sn.nest(build("qwen2"), space)
    batch = inputs("qwen2")
    path = tmp_path / "q.safetensors"
    nested.low_rank_modules()["model.layers.0.mlp.up_proj"].cap = 5
    nested.save(path)
    loaded = sn.load(path)
    assert loaded.low_rank_modules()["model.layers.0.mlp.up_proj"].cap == 5
    assert sn.read_metadata(path)["low_rank"]["model.layers.0.mlp.up_proj"]["cap"] == 5
    for subnet in ("depth=2,hidden=16,heads=2,ffn=0.5,rank=0.25", str(space.largest)):
        with torch.no_grad(), nested.use(subnet), loaded.use(subnet):
            want = output(nested, batch)
            assert torch.equal(output(loaded, batch), want)
            small = sn.load_submodel(path, subnet)
            assert (output(small, batch) - want).abs().max().item() <= 1e-5
            assert (output(nested.extract(subnet), batch) - want).abs().max().item() <= 1e-5


def test_unnest_fuses_the_factors_back():
    model = build("gpt2")
    batch = inputs("gpt2")
    with torch.no_grad():
        ref = output(model, batch)
    plain = sn.nest(model, sn.NestingSpace(rank=[0.5, 1.0])).unnest()
    assert not any(type(m).__module__.startswith("sortednet") for m in plain.modules())
    with torch.no_grad():
        assert (output(plain, batch) - ref).abs().max().item() <= 1e-5


def test_group_lasso_is_the_sum_over_every_tail_group():
    nested = sn.nest(build("llama"), sn.NestingSpace(rank=[0.5, 1.0], rank_targets=["mlp.up_proj"]))
    want = 0.0
    for m in nested.low_rank_modules().values():
        sq = m.U.pow(2).sum(0) + m.V.pow(2).sum(1)
        want += sum(sq[b:].sum().sqrt() for b in range(m.full_rank))
    assert group_lasso(nested).item() == pytest.approx(float(want), rel=1e-5)
    group_lasso(nested).backward()
    grad = nested.low_rank_modules()["model.layers.0.mlp.up_proj"].U.grad
    assert grad is not None and grad.abs().sum() > 0


def test_shrinking_cuts_negligible_trailing_components_after_patience():
    nested = sn.nest(build("llama"), sn.NestingSpace(rank=[0.5, 1.0], rank_targets=["mlp.up_proj"]))
    target = nested.low_rank_modules()["model.layers.1.mlp.up_proj"]
    with torch.no_grad():
        target.U[:, 10:] *= 1e-6
    before = nested.num_params(nested.space.largest)
    shrinker = Shrinker(every=5, threshold=1e-3, patience=2)
    assert shrinker.step(nested, 5) == {}
    assert shrinker.step(nested, 10) == {"model.layers.1.mlp.up_proj": 10}
    assert target.cap == 10 and all(
        m.cap == 32 for m in nested.low_rank_modules().values() if m is not target
    )
    assert nested.num_params(nested.space.largest) == before - (48 * 32 - 10 * (48 + 32))
    assert importance(target)[:10].min() > 0


def test_per_layer_ranks_stay_under_the_subnet_and_clear():
    nested = sn.nest(build("llama"), sn.NestingSpace(rank=[0.25, 0.5, 1.0]))
    with nested.use("rank=0.5"):
        sample_layer_ranks(nested, np.random.default_rng(0))
        drawn = [m.rank() for m in nested.low_rank_modules().values()]
        assert all(
            1 <= r <= m.full_rank // 2 for r, m in zip(drawn, nested.low_rank_modules().values(), strict=True)
        )
        assert len(set(drawn)) > 2  # any rank in 1..r per layer, not only the space's coarse grid
        grid = {m.full_rank // 4 for m in nested.low_rank_modules().values()} | {
            m.full_rank // 2 for m in nested.low_rank_modules().values()
        }
        assert set(drawn) - grid
        sample_layer_ranks(nested, None)
        assert all(m.rank() == m.full_rank // 2 for m in nested.low_rank_modules().values())


def test_ordered_dropout_recovers_the_svd_of_a_linear_map():
    """Maestro's claim: trained with ordered dropout on uniform inputs, the ordered components of U V are the
    singular vectors of the map, in order."""
    torch.manual_seed(0)
    n = 6
    left, _ = torch.linalg.qr(torch.randn(n, n))
    right, _ = torch.linalg.qr(torch.randn(n, n))
    target = left @ torch.diag(torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])) @ right.T
    state = NestState({"depth": 1, "hidden": n, "q": n, "kv": n, "ffn": n, "rank": n})
    layer = LowRankLinear(nn.Linear(n, n, bias=False), state, [(0, "q")], "hidden", max_rank=n, absolute=True)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 3000)
    g = torch.Generator().manual_seed(1)
    for _ in range(3000):
        x = torch.rand(256, n, generator=g) * 2 - 1
        state.rank = int(torch.randint(1, n + 1, (1,), generator=g))
        loss = (layer(x) - x @ target.T).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    u, v = layer.U.detach(), layer.V.detach()
    for i in range(3):
        assert abs(float(u[:, i] @ left[:, i])) / float(u[:, i].norm()) >= 0.99
        assert abs(float(v[i] @ right[:, i])) / float(v[i].norm()) >= 0.99
    assert importance(layer)[:3].tolist() == pytest.approx([6.0, 5.0, 4.0], rel=0.02)
