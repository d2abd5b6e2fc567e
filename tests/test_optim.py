"""NestedAdamW: `update=all` is torch's AdamW (fused where the device has it); `update=touched` moves exactly the
union of what the step's subnets used and leaves the rest (values and moments) as they were."""

import random

import pytest
import torch
from tiny import build, inputs, output, space

import sortednet as sn
from sortednet.optim import NestedAdamW, disjoint_boxes, fused_supported
from sortednet.train.options import Optim

SPACE = dict(depth=[2, 4], ffn=[0.5, 1.0], heads=[2, 4], hidden=[0.5, 1.0])


def mask(boxes, shape):
    m = torch.zeros(shape, dtype=torch.bool)
    for box in boxes:
        m[tuple(slice(a, b) for a, b in box)] = True
    return m


def test_disjoint_boxes_cover_the_union_exactly_once():
    rng = random.Random(0)
    for _ in range(300):
        shape = (rng.randint(1, 9), rng.randint(1, 9))
        boxes = []
        for _ in range(rng.randint(1, 5)):
            r0 = rng.randrange(shape[0])
            c1 = rng.randint(1, shape[1])
            boxes.append(((r0, rng.randint(r0 + 1, shape[0])), (0, c1)))
        parts = disjoint_boxes(boxes, shape)
        want = mask(boxes, shape)
        if parts is None:
            assert want.all()
            continue
        count = torch.zeros(shape, dtype=torch.int)
        for part in parts:
            count[part] += 1
        assert torch.equal(count, want.int()), (boxes, parts)
    assert disjoint_boxes([((0, 4),)], (4,)) is None
    assert disjoint_boxes([((0, 2),), ((1, 3),)], (4,)) == [(slice(0, 3),)]


def step_once(update: str, subnets) -> tuple[sn.NestedModel, dict, NestedAdamW]:
    torch.manual_seed(0)
    nested = sn.nest(build("llama"), space("llama", **SPACE))
    before = {n: p.detach().clone() for n, p in nested.named_parameters()}
    touched = nested.state.touched = {} if update == "touched" else None
    opt = NestedAdamW(nested.parameters(), lr=0.1, weight_decay=0.1, touched=touched)
    batch = inputs("llama")
    for subnet in subnets:
        with nested.use(subnet):
            output(nested, batch).square().mean().backward()
    opt.step()
    return nested, before, opt


def test_touched_moves_only_what_the_subnets_used():
    small = sn.Subnet.parse("depth=2,ffn=0.5,heads=2,hidden=0.5")
    wide = sn.Subnet.parse("depth=2,ffn=1.0,heads=2,hidden=0.5")
    touched, before, opt = step_once("touched", [small, wide])
    everything, _, _ = step_once("all", [small, wide])
    params = dict(everything.named_parameters())
    checked = 0
    for name, p in touched.named_parameters():
        if p.grad is None:  # layers 2 and 3: no subnet ran them, no mode moves them
            assert torch.equal(p, before[name]) and torch.equal(params[name], before[name]), name
            continue
        moved = p != before[name]
        # where touched moved a value, it moved it exactly as AdamW on the whole tensor does
        torch.testing.assert_close(p[moved], params[name][moved], rtol=0, atol=1e-6)
        # down_proj, hidden x ffn: rows :16 (hidden 0.5), all 48 columns (the wide subnet's ffn)
        if ".down_proj." in name and name.endswith("weight"):
            assert moved[:16].all() and not moved[16:].any(), name
            assert opt.state[p]["exp_avg"][16:].abs().max() == 0
            checked += 1
        # q_proj: heads 2 of 4 x head size 8 = rows :16, columns :16 (hidden 0.5)
        if ".q_proj." in name and name.endswith("weight"):
            assert moved[:16, :16].all() and not moved[16:].any() and not moved[:, 16:].any(), name
            checked += 1
        if "embed_tokens" in name:
            assert not moved[:, 16:].any() and moved[:, :16].any(), name
            checked += 1
    assert checked == 5, checked
    assert not opt.touched  # spent by the step
    # the unused rows did move under update=all (weight decay): the difference between the modes
    name = next(n for n in before if ".0.mlp.down_proj." in n and n.endswith("weight"))
    assert (params[name][16:] != before[name][16:]).all()


def test_all_is_torch_adamw_fused_where_supported():
    nested, before, opt = step_once("all", [sn.Subnet.parse("depth=2,ffn=0.5,heads=2,hidden=0.5")])
    assert opt.defaults["fused"] is (True if fused_supported(nested.parameters()) else None)
    reference = sn.nest(build("llama"), space("llama", **SPACE))
    for (_, p), (_, q) in zip(nested.named_parameters(), reference.named_parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    torch.optim.AdamW(reference.parameters(), lr=0.1, weight_decay=0.1).step()
    for (name, p), (_, q) in zip(nested.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_update_value_is_checked():
    assert Optim().update == "all"
    with pytest.raises(ValueError, match=r"^optim.update='some' is unknown; allowed: all, touched$"):
        Optim(update="some")


@pytest.mark.parametrize("update", ["all", "touched"])
def test_training_with_update_touched_leaves_unused_ffn_rows_alone(update):
    import lightning as L
    from tiny import digits_vit
    from torch import nn

    from sortednet.data import ImageClassificationDataModule
    from sortednet.sampling import make_sampler
    from sortednet.train import Classification, SortedNetModule

    data = ImageClassificationDataModule(batch_size=16, seed=0)
    nested = sn.nest(digits_vit(), sn.NestingSpace(depth=[1, 3], ffn=[0.25]))  # every subnet: 16 of 64 rows
    sampler = make_sampler("uniform", nested.space, k=1)
    fc1 = next(m for n, m in nested.named_modules() if n.endswith("layers.0.mlp.fc1.base_layer"))
    assert isinstance(fc1, nn.Linear)
    before = fc1.weight.detach().clone()
    module = SortedNetModule(nested, Classification(), sampler, optim={"update": update, "weight_decay": 0.5})
    L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    ).fit(module, datamodule=data)  # fmt: skip
    rows = nested.sizes(nested.space.largest)["ffn"]
    assert rows == 16
    assert (fc1.weight[:rows] != before[:rows]).all()
    unused_moved = (fc1.weight[rows:] != before[rows:]).any()
    assert unused_moved == (update == "all")


def test_head_lr_gives_the_task_head_its_own_learning_rate():
    import lightning as L
    from tiny import digits_vit

    from sortednet.data import ImageClassificationDataModule
    from sortednet.optim import head_parameter_ids
    from sortednet.sampling import make_sampler
    from sortednet.train import Classification, SortedNetModule

    nested = sn.nest(digits_vit(), sn.NestingSpace(depth=[1, 3]))
    head = head_parameter_ids(nested.model)
    assert head == {id(p) for p in nested.model.classifier.parameters()}
    module = SortedNetModule(
        nested, Classification(), make_sampler("uniform", nested.space, k=1),
        optim={"lr": 1e-3, "head_lr": 0.05, "schedule": "constant"},
    )  # fmt: skip
    L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    ).fit(module, datamodule=ImageClassificationDataModule(batch_size=16, seed=0))  # fmt: skip
    lr_of = {id(p): g["lr"] for g in module.optimizers().optimizer.param_groups for p in g["params"]}
    assert {lr_of[i] for i in head} == {0.05}
    assert {lr for i, lr in lr_of.items() if i not in head} == {1e-3}
    assert len(lr_of) == sum(1 for p in nested.parameters() if p.requires_grad)


def test_head_lr_value_is_checked():
    assert Optim().head_lr is None
    with pytest.raises(ValueError, match=r"^optim.head_lr=0"):
        Optim(head_lr=0)


def test_sn_optimizer_is_the_trainers_and_steps_only_what_a_subnet_read():
    from sortednet.optim import param_groups

    nested = sn.nest(build("llama"), space("llama", **SPACE))
    opt = sn.optimizer(nested, lr=1e-2, weight_decay=0.1)
    assert isinstance(opt, NestedAdamW) and nested.state.touched == {}
    want = param_groups(nested, 0.1)
    assert [[id(p) for p in g["params"]] for g in opt.param_groups] == [
        [id(p) for p in g["params"]] for g in want
    ]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    before = {n: p.detach().clone() for n, p in nested.named_parameters()}
    subnet = "depth=2,ffn=0.5,heads=2,hidden=0.5"
    with nested.use(subnet):
        output(nested, inputs("llama")).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert nested.state.touched == {}  # spent by the step

    def named(part):
        return next(n for n, p in nested.named_parameters() if part in n and n.endswith("weight"))

    params = dict(nested.named_parameters())
    down = named("layers.0.mlp.down_proj")
    moved = params[down].detach() != before[down]
    assert moved[:16, :24].any() and not moved[16:].any() and not moved[:, 24:].any()
    skipped = named("layers.3.mlp.up_proj")  # a layer the subnet does not run
    assert torch.equal(params[skipped], before[skipped])


def test_sn_optimizer_refuses_what_it_cannot_do():
    from test_stitch import vit

    nested = sn.nest(build("llama"), space("llama", depth=[2, 4]))
    with pytest.raises(ValueError, match=r"update='some' is unknown; allowed: all, touched"):
        sn.optimizer(nested, update="some")
    with pytest.raises(ValueError, match=r"optimizer\(\) takes a nested or stitched model"):
        sn.optimizer(build("llama"))
    stitched = sn.stitch({"small": vit(16, 4), "large": vit(32, 4, seed=1)})
    with pytest.raises(ValueError, match=r"a StitchedModel runs whole tensors: allowed: update='all'"):
        sn.optimizer(stitched)
    assert isinstance(sn.optimizer(stitched, update="all"), NestedAdamW)
