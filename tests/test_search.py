"""sortednet-search: mutations and crossovers stay in the space and the budget, the search is deterministic and
resumes, the slicing config round-trips (Gemma 3n's own files read too), and the CLI finds, stores and exports
slices that sortednet-export --slice and sn.load_submodel take by name."""

import json

import numpy as np
import pytest
from tiny import llama4

import sortednet as sn
from sortednet.search import Evolution, SearchOptions, crossover, mutate, spearman
from sortednet.slicing import find, read_slices, slice_row, write_slices

SPACE = dict(depth=[2, 3, 4], ffn=[0.25, 0.5, 1.0], heads=[0.5, 1.0], per_layer=["ffn", "heads", "layers"])


def nested():
    return sn.nest(llama4(), sn.NestingSpace(**SPACE))


def test_mutations_and_crossovers_are_members():
    model = nested()
    space, rng = model.space, np.random.default_rng(0)
    members = [space.sample_member(rng) for _ in range(20)]
    for a, b in zip(members, members[1:], strict=False):
        assert mutate(space, a, rng, 0.5) in space and crossover(space, a, b, rng) in space


def test_the_search_keeps_the_budget_is_deterministic_and_resumes():
    model = nested()
    limit = model.num_params("depth=3,ffn=0.5,heads=1.0")
    proxy = lambda m: abs(model.num_params(m) - 0.9 * limit)  # noqa: E731  (a stand-in: any deterministic score)
    options = SearchOptions(population=8, generations=3, seed=5)
    first = Evolution(model.space, model.num_params, limit, proxy, options)
    first.start()
    for _ in range(3):
        first.step()
    again = Evolution(model.space, model.num_params, limit, proxy, options)
    again.start()
    again.step()
    resumed = Evolution(
        model.space, model.num_params, limit, proxy, options, json.loads(json.dumps(again.state()))
    )
    for _ in range(2):
        resumed.step()
    assert first.population == resumed.population
    assert all(model.num_params(m) <= limit for m in first.finalists(8))
    assert any(m.per_layer for m in first.finalists(8)) and first.evaluations >= 8
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_the_slicing_config_round_trips_and_reads_gemma_files(tmp_path):
    model = nested()
    member = "ffn=[0.25,1.0,0.5],heads=[0.5,1.0,1.0],layers=0+2-3"
    row = slice_row(model.space, "E-mini", member, model.num_params(member), "accuracy", 0.5)
    assert row["ffn"] == [16, 64, 32] and row["skipped"] == [1] and row["layers"] == 3
    write_slices(tmp_path / "slices.csv", [row])
    header = (tmp_path / "slices.csv").read_text().splitlines()[0]
    assert (
        header == "name,# Layers,# Effective Params (B),accuracy,FFN Hidden Dims,Layers Skipped,subnet,params"
    )
    assert find(read_slices(tmp_path / "slices.csv"), "E-mini") == str(model.space.normalize(member))
    gemma = tmp_path / "gemma.csv"
    gemma.write_text(
        "name,# Layers,# Effective Params (B),MMLU PT accuracy,FFN Hidden Dims,Layers Skipped\n"
        'small,3,0.1,50%,"[16 * 2, 16, 4 * 16]","[1]"\n'
    )
    (small,) = read_slices(gemma)
    assert model.space.normalize(small["subnet"]) == model.space.normalize("ffn=[0.5,0.25,1.0],layers=0+2-3")
    with pytest.raises(ValueError, match=r"^slice 'E9B' is not in the slicing config; its slices: 'E-mini'$"):
        find(read_slices(tmp_path / "slices.csv"), "E9B")


@pytest.mark.slow
def test_the_cli_searches_a_trained_run_stores_and_exports_its_slices(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from sortednet.cli import export, search
    from sortednet.cli.train import CONF_DIR, run

    overrides = [f"run_dir={tmp_path}/run", "trainer.max_steps=3", "trainer.val_check_interval=3",
                 "callbacks.progress=null", "nesting.per_layer=[ffn,heads]", "sampler.per_layer=true"]  # fmt: skip
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        run(compose("train", overrides=overrides))
    search.main([str(tmp_path / "run"), "--max-params", "60K,150K", "--population", "6", "--generations", "2",
                 "--finalists", "2", "--names", "small,mid", "--export", str(tmp_path / "out")])  # fmt: skip
    out = capsys.readouterr().out
    assert "proxy (KL to the largest) vs accuracy: Spearman" in out
    slices = sn.read_metadata(tmp_path / "run")["slices"]
    assert [s["name"] for s in slices] == ["small", "mid"] and slices[0]["params"] <= 60_000
    assert (tmp_path / "run" / "search" / "slices.csv").is_file()
    for name, row in zip(["small", "mid"], slices, strict=True):
        model = sn.load_submodel(tmp_path / "run", name)
        widths_differ = "[" in row["subnet"]
        if widths_differ:  # no plain config says it: the nested model, that member active
            assert isinstance(model, sn.NestedModel) and str(model.active) == row["subnet"]
        else:
            assert sum(p.numel() for p in model.parameters()) == row["params"]
    mid_differs = "[" in slices[1]["subnet"]
    if mid_differs:
        with pytest.raises(SystemExit) as exit_info:
            export.main([str(tmp_path / "run"), "--slice", "mid", "--out", str(tmp_path / "mid")])
        assert exit_info.value.code == 2
        assert "gives its layers different sizes" in capsys.readouterr().err
    else:
        export.main([str(tmp_path / "run"), "--slice", "mid", "--out", str(tmp_path / "mid")])
        assert (tmp_path / "mid" / "config.json").is_file()
