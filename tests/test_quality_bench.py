"""bench.quality's pure parts: the cache key, the equal-compute step count, spreads, ratios and verdicts,
passes to reach from a metrics.csv, the validation-size check, the shapes chosen and the twins' one-member
spaces."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import quality_cases as C
from bench import quality_stats as S
from bench.quality_runs import Trained, cache_key, code_state, resolved_config
from bench.quality_summary import best_variant, curve_with_end, reach
from sortednet.train.config import check as check_config


def test_cache_key_follows_the_resolved_config_the_code_and_the_versions():
    cfg = C.compose("digits_vit", [])
    resolved = resolved_config(cfg)
    assert resolved["data"]["seed"] == 0 and "run_dir" not in resolved
    reseeded = resolved_config(C.with_seed(cfg, 1))
    assert reseeded["data"]["seed"] == 1  # the interpolation ${seed}, resolved
    moved = C.edited(cfg)
    moved.run_dir = "/somewhere/else"
    versions = {"torch": "2.13.0", "transformers": "5.25.0", "lightning": "2.6.6"}
    key = cache_key(resolved, "abc+123", versions)
    assert cache_key(resolved_config(moved), "abc+123", versions) == key
    assert cache_key(reseeded, "abc+123", versions) != key
    assert cache_key(resolved, "abd+123", versions) != key
    assert cache_key(resolved, "abc+124", versions) != key
    assert cache_key(resolved, "abc+123", {**versions, "torch": "2.14.0"}) != key


def test_code_state_changes_with_uncommitted_and_untracked_library_files_only(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "sortednet").mkdir()
    (tmp_path / "sortednet" / "a.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = code_state(tmp_path)
    (tmp_path / "README.md").write_text("other docs\n")
    assert code_state(tmp_path) == clean
    (tmp_path / "sortednet" / "a.py").write_text("x = 2\n")
    edited = code_state(tmp_path)
    assert edited != clean and edited.split("+")[0] == clean.split("+")[0]
    (tmp_path / "sortednet" / "b.py").write_text("y = 1\n")
    assert code_state(tmp_path) not in (clean, edited)
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "code")
    committed = code_state(tmp_path)
    assert committed.split("+")[0] != clean.split("+")[0]
    (tmp_path / "README.md").write_text("more docs\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "docs only")
    assert code_state(tmp_path) == committed


def test_equal_compute_steps_give_the_nested_run_the_passes_of_all_twins():
    assert S.equal_compute_steps(600, 6, 3) == 1200  # 6 twins x 600 passes = 1200 steps x 3 passes
    assert S.equal_compute_steps(300, 8, 8) == 300  # sampler=all over 8 sub-models, 8 twins
    assert S.equal_compute_steps(200, 3, 4) == 150
    assert S.equal_compute_steps(10, 1, 64) == 1


def test_spread_ratio_and_verdicts_in_both_directions():
    s = S.spread([0.90, 0.92, 0.94])
    assert s.mean == pytest.approx(0.92) and s.std == pytest.approx(0.02) and s.n == 3
    assert S.spread([0.5]).std is None
    alone = S.spread([0.95, 0.97])
    assert S.ratio_of_means(S.spread([0.93]), alone) == pytest.approx(0.93 / 0.96)
    assert S.meets("accuracy", 0.981, S.EQUAL_STEPS["accuracy"])
    assert not S.meets("accuracy", 0.979, S.EQUAL_STEPS["accuracy"])
    assert S.meets("loss", 1.019, S.EQUAL_STEPS["loss"])  # lower loss is better: at most 1.02 x alone
    assert not S.meets("loss", 1.021, S.EQUAL_STEPS["loss"])
    assert not S.meets("loss", 1.001, S.EQUAL_COMPUTE["loss"]) and S.meets(
        "loss", 0.999, S.EQUAL_COMPUTE["loss"]
    )


def twin(value: float, metric: str) -> Trained:
    return Trained([{"subnet": "s", metric: value}], wall_s=1.0)


def test_the_better_variant_is_the_better_mean_over_seeds():
    accuracy = {"cls": [twin(0.99, "accuracy"), twin(0.10, "accuracy")], "mean": [twin(0.60, "accuracy")] * 2}
    assert best_variant(accuracy, "accuracy") == "mean"  # not the variant of the best single seed
    loss = {"cls": [twin(2.0, "loss")], "mean": [twin(1.5, "loss")]}
    assert best_variant(loss, "loss") == "mean"


METRICS_CSV = """\
epoch,step,train/loss,"val/accuracy/depth=2,ffn=0.5","val/loss/depth=2,ffn=0.5",val/accuracy/small:1>large:2
0,9,2.3,,,
0,9,,0.50,1.20,0.40
0,19,,0.70,0.90,0.45
0,29,2.0,,,
0,29,,0.80,0.70,0.60
"""


def test_passes_to_reach_from_a_metrics_csv():
    curves = S.read_curves(METRICS_CSV, "accuracy", ["depth=2,ffn=0.5", "small:1>large:2"])
    assert curves["depth=2,ffn=0.5"] == [(10, 0.50), (20, 0.70), (30, 0.80)]
    assert S.first_reach(curves["depth=2,ffn=0.5"], 0.65, "accuracy") == 20
    assert S.first_reach(curves["small:1>large:2"], 0.65, "accuracy") is None
    loss = S.read_curves(METRICS_CSV, "loss", ["depth=2,ffn=0.5"])["depth=2,ffn=0.5"]
    assert S.first_reach(loss, 0.95, "loss") == 20  # lower is better
    assert S.mean_curve([[(10, 0.4), (20, 0.6)], [(10, 0.6), (20, 0.8), (30, 0.9)]]) == [
        (10, pytest.approx(0.5)),
        (20, pytest.approx(0.7)),
    ]
    run = Trained([{"subnet": "small:1>large:2", "accuracy": 0.66}], 1.0, curves=curves)
    assert curve_with_end(run, "small:1>large:2", "accuracy", 30)[-1] == (30, 0.66)  # the eval table ends it
    plan = SimpleNamespace(accumulate=1, k=3, case=SimpleNamespace(metric="accuracy"))
    assert reach(plan, [run], "small:1>large:2", 0.65, steps=30) == {"passes": 90, "within": 90, "steps": 30}
    assert reach(plan, [run], "small:1>large:2", 0.70, steps=30)["passes"] is None


def test_the_validation_set_must_resolve_the_band_in_three_standard_errors():
    small = S.binomial_resolution(0.97, 360)  # digits: 360 validation images
    assert small.se == pytest.approx(math.sqrt(0.97 * 0.03 / 360))
    assert small.band == pytest.approx(0.0194) and small.enough is False
    assert small.needed == math.ceil(9 * 0.97 * 0.03 / 0.0194**2)
    assert S.binomial_resolution(0.97, small.needed).enough
    loss = S.batch_resolution(2.0, [1.99, 2.0, 2.01, 2.0])
    assert loss.se == pytest.approx(0.008165 / 2, rel=1e-3) and loss.enough is True
    assert S.batch_resolution(2.0, [1.9, 2.0, 2.1, 2.0]).enough is False
    assert S.batch_resolution(2.0, [2.0]).enough is None


def test_shapes_hold_the_smallest_the_middle_and_the_largest():
    ordered = [f"s{i}" for i in range(18)]
    six = C.pick_shapes(ordered, 6)
    assert len(six) == len(set(six)) == 6 and {"s0", "s8", "s17"} <= set(six)
    assert six == sorted(six, key=ordered.index)
    assert C.pick_shapes(ordered, 3) == ["s0", "s8", "s17"]
    assert C.pick_shapes(ordered[:5], None) == ordered[:5] == C.pick_shapes(ordered[:5], 9)


@pytest.mark.parametrize(
    ("recipe", "member"),
    [
        ("digits_vit", "depth=4,heads=2,ffn=0.5"),
        ("snnet_digits", "small:2>medium:2"),
        ("snnetv2_digits", "small:4>large:4-5>small:5"),
    ],
)
def test_a_twin_is_the_recipe_with_a_space_of_its_one_member(recipe, member):
    cfg = C.compose(recipe, [])
    twin_cfg = C.twin_config(cfg, member, "accuracy")
    checked = check_config(twin_cfg)
    assert [str(m) for m in checked.space] == [member]
    assert checked.sampler.k == 1
    assert twin_cfg.optim == cfg.optim and twin_cfg.trainer.max_steps == cfg.trainer.max_steps


def test_a_teacher_phase_is_paid_from_the_equal_compute_budget():
    # 3 twins x 100 steps = 300 passes; the teacher's 100 first, then 3 passes + a third per nested step
    assert S.equal_compute_steps(100, 3, 3, teacher_steps=100) == 60
    assert S.equal_compute_steps(100, 3, 3, teacher_steps=0) == 100
    assert S.equal_compute_steps(10, 1, 3, teacher_steps=50) == 1  # at least one step


def test_a_teacher_phase_is_counted_in_b_and_said_in_a():
    from bench.quality_report import summary_lines
    from bench.quality_summary import teacher_passes

    assert teacher_passes(SimpleNamespace(teacher_steps=40, accumulate=2)) == 80
    assert teacher_passes(SimpleNamespace(teacher_steps=0, accumulate=1)) == 0
    row = {
        "steps": {"ratio": 1.01, "ok": True},
        "compute": {"ok": False},
        "reach": {"passes": 150},
        "val_count": 100,
        "resolution": SimpleNamespace(enough=True),
    }
    r = {"rows": [row], "metric": "accuracy", "equal_steps": True, "compute_steps": 100, "steps": 100}
    w = {"measured": 1.0, "measured_runs": 1, "cached": 0.0, "cached_runs": 0}
    r |= {"accumulate": 1, "wall": {"nested": w, "alone": w, "sizing": w}, "teacher_passes": 80}
    text = summary_lines(r)[0]
    assert "(b) (the teacher phase counted): 0 of 1 within target" in text
    assert "after the teacher's 80; its 1 twins took 100 together (2.30 x)" in text


def test_every_offline_recipe_has_a_case():
    recipes = {p.stem for p in (Path(C.__file__).parents[1] / "recipes").glob("*.yaml")}
    hub_or_gpu = {"matformer_llama", "snnet_deit", "snnetv2_deit", "sortednet_bert_glue", "usnet_cifar10"}
    assert set(C.CASES) == recipes - hub_or_gpu
