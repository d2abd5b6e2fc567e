"""Distillation from a trained teacher (train.distill.teacher): its options refused in one line, the hidden-state
term at matching depths, every subnet (the largest too) learning the teacher, the teacher phase of
sortednet-train and its resume; and the sandwich sampler's cycle through the middle members."""

import pytest
import torch

import sortednet as sn
from sortednet.sampling import SandwichSampler
from sortednet.tasks import Classification
from sortednet.train.distill import Distiller, hidden_loss
from sortednet.train.options import Distill


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"teacher": "finetune"},
            r"teacher=finetune with train.distill.teacher_steps=0: the teacher phase needs",
        ),
        ({"teacher_steps": 5}, r"teacher=None with train.distill.teacher_steps=5"),
        ({"hidden": 1.0}, r"train.distill.hidden=1.0 needs a teacher model"),
        ({"teacher": "./no/such/teacher"}, r"train.distill.teacher='./no/such/teacher' does not exist"),
        ({"teacher": "finetune", "teacher_steps": 2, "teacher_lr": 0}, r"train.distill.teacher_lr=0 is"),
    ],
)
def test_bad_teacher_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        Distill(enabled=True, **options)


def test_the_hidden_term_matches_each_kept_layer_with_the_same_teacher_layer():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 8) for _ in range(5)]  # embeddings + 4 layers
    kept = (1, 3)
    student = [teacher[0], teacher[2], torch.randn(2, 5, 8)]  # the last one is the logits term's
    assert hidden_loss(student, teacher, kept, None).item() == 0.0
    wrong = [teacher[0], teacher[1], teacher[4]]
    assert hidden_loss(wrong, teacher, kept, None).item() > 0.1
    narrow = [t[..., :4] for t in (teacher[0], teacher[2])] + [torch.zeros(2, 5, 4)]
    assert (
        hidden_loss(narrow, teacher, kept, None).item() == 0.0
    )  # a narrower hidden size: the first features
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = [s.clone() for s in student]
    padded[1][0, 3:] += 100.0  # padding is left out
    assert hidden_loss(padded, teacher, kept, mask).item() == 0.0


def test_with_a_teacher_every_subnet_the_largest_too_learns_from_it():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    teacher_logits = torch.tensor([[2.0, -1.0, 0.0]])
    teacher = lambda **_: Out(teacher_logits)  # noqa: E731
    labels = torch.tensor([0])
    options = Distill(enabled=True, alpha=1.0, temperature=1.0, teacher="some/folder-on-the-hub")
    distiller = Distiller(options, Classification(), teacher)
    distiller.begin({"input_ids": torch.zeros(1, 2)})
    for logits in (teacher_logits, torch.zeros(1, 3)):  # the largest first, then a smaller subnet
        term = distiller.objective("any", Out(logits), torch.tensor(5.0), labels)
        assert term.item() == pytest.approx(
            Classification().distill(logits, teacher_logits, labels, 1.0).item()
        )


def test_the_sandwich_cycle_trains_every_middle_member_once_a_round():
    space = sn.NestingSpace(depth=[2, 3, 4, 6], ffn=[0.25, 0.5, 1.0])
    sampler = SandwichSampler(space, k=4, seed=3, middle="cycle")
    assert len(sampler.middle) == 10
    rounds = [[m for step in range(5 * r, 5 * r + 5) for m in sampler.sample(step)[2:]] for r in range(3)]
    assert all(sorted(map(str, r)) == sorted(map(str, sampler.middle)) for r in rounds)
    assert rounds[0] != rounds[1]  # a new order each round
    assert sampler.sample(7) == SandwichSampler(space, k=4, seed=3, middle="cycle").sample(7)
    random = SandwichSampler(space, k=3, seed=0)
    counts = {m: 0 for m in random.middle}
    for step in range(100):
        for m in random.sample(step)[2:]:
            counts[m] += 1
    assert min(counts.values()) < 10 < max(counts.values())  # the starvation the cycle cures
    with pytest.raises(ValueError, match=r"^sampler.middle='all' is unknown; allowed: random, cycle$"):
        SandwichSampler(space, k=3, middle="all")


@pytest.mark.slow
def test_the_teacher_phase_trains_saves_and_is_reused_on_resume(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from sortednet.cli.train import CONF_DIR, run

    def config(*overrides):
        quick = ["callbacks.progress=null", "eval_table.max_batches=2", "trainer.val_check_interval=2"]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[f"run_dir={tmp_path}/run", *quick, *overrides])

    teacher = [
        "train.distill.enabled=true",
        "train.distill.teacher=finetune",
        "train.distill.teacher_steps=3",
        "train.distill.hidden=0.5",
        "nesting.depth_order=every_other",
    ]
    run(config(*teacher, "trainer.max_steps=2"))
    assert (
        "train.distill.teacher=finetune: the full model, 3 steps, trained alone, loss"
        in capsys.readouterr().out
    )
    saved = sn.load(tmp_path / "run" / "teacher.safetensors")
    assert len(saved.space) == 1
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run(config(*teacher, "trainer.max_steps=4", f"ckpt_path={ckpt}"))
    out = capsys.readouterr().out
    assert "trained alone" not in out  # the resume distils from the saved teacher
    assert sn.read_metadata(tmp_path / "run")["global_step"] == 4


def test_hard_distillation_is_cross_entropy_against_the_teachers_argmax():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5)
    ids = torch.tensor([0, 1, 2, 3, 4, -100])
    task = Classification()
    hard = task.distill(student, teacher, ids, 4.0, hard=True)
    expected = torch.nn.functional.cross_entropy(student[:5], teacher[:5].argmax(-1))
    assert hard.item() == pytest.approx(expected.item())  # no temperature; unlabelled rows left out
    soft_labels = torch.full((6, 5), 0.2)  # mixup / smoothing: every row counts
    expected = torch.nn.functional.cross_entropy(student, teacher.argmax(-1))
    assert task.distill(student, teacher, soft_labels, 1.0, hard=True).item() == pytest.approx(
        expected.item()
    )
    # DeiT's objective: (1 - alpha) task loss + alpha hard term
    options = Distill(enabled=True, alpha=0.5, hard=True, teacher="some/teacher")

    class Out:
        def __init__(self, logits):
            self.logits = logits

    distiller = Distiller(options, task, lambda **_: Out(teacher))
    distiller.begin({"pixel_values": torch.zeros(6, 1)})
    loss = task.loss(student, soft_labels)
    got = distiller.objective("any", Out(student), loss, soft_labels)
    assert got.item() == pytest.approx(0.5 * loss.item() + 0.5 * expected.item())


def test_soft_labels_are_class_probabilities_of_the_cross_entropy():
    torch.manual_seed(1)
    logits, ids = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    one_hot = torch.nn.functional.one_hot(ids, 3).float()
    task = Classification()
    assert task.loss(logits, one_hot).item() == pytest.approx(task.loss(logits, ids).item(), rel=1e-6)
    smooth = one_hot * 0.9 + 0.1 / 3
    manual = -(smooth * logits.log_softmax(-1)).sum(-1).mean()
    assert task.loss(logits, smooth).item() == pytest.approx(manual.item(), rel=1e-6)


def test_a_teacher_of_another_class_is_loaded_frozen_with_the_datas_labels(tmp_path):
    import transformers as T

    from sortednet.train.teacher import frozen_teacher

    config = T.RegNetConfig(
        num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=10
    )
    T.RegNetForImageClassification(config).save_pretrained(tmp_path / "regnet")

    class Data:
        def model_kwargs(self):
            return {
                "num_labels": 10,
                "id2label": {i: str(i) for i in range(10)},
                "image_size": 8,
                "num_channels": 1,
            }

    options = Distill(
        enabled=True,
        hard=True,
        teacher=str(tmp_path / "regnet"),
        teacher_class="RegNetForImageClassification",
    )
    teacher = frozen_teacher(options, options.teacher_class, Data())
    assert isinstance(teacher, T.RegNetForImageClassification) and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters()) and teacher.config.id2label[3] == "3"
    assert teacher(pixel_values=torch.randn(2, 1, 8, 8)).logits.shape == (2, 10)


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"teacher_class": "NoSuchModel", "teacher": "x/y"},
            r"teacher_class='NoSuchModel' is not a transformers",
        ),
        (
            {"teacher_class": "RegNetForImageClassification"},
            r"teacher_class=RegNetForImageClassification with train.distill.teacher=None; allowed: a teacher folder",
        ),
        (
            {"teacher_class": "RegNetForImageClassification", "teacher": "x/y", "hidden": 1.0},
            r"a teacher of another class has no matching layers",
        ),
        ({"hard": "yes"}, r"train.distill.hard='yes' is not allowed; allowed: true or false"),
    ],
)
def test_bad_hard_or_foreign_teacher_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        Distill(enabled=True, **options)


def test_a_stitched_run_refuses_the_teacher_phase_and_the_hidden_term():
    from sortednet.train.options import check_distill_stitched

    check_distill_stitched(Distill(enabled=True, teacher="x/y", hard=True))
    with pytest.raises(ValueError, match=r"^train.distill.teacher=finetune fine-tunes the run's model"):
        check_distill_stitched(Distill(enabled=True, teacher="finetune", teacher_steps=2))
    with pytest.raises(ValueError, match=r"^train.distill.hidden=1.0 matches a nested model's kept layers"):
        check_distill_stitched(Distill(enabled=True, teacher="x/y", hidden=1.0))
