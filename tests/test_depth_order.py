"""nesting.depth_order: which layers depth=k keeps. Sub-models that skip layers run, count, export, load, draft and
generate exactly like the plain model of their kept layers; the order is recorded, loaded back and shown."""

import pytest
import torch
import transformers as T
from tiny import llama4

import sortednet as sn
from sortednet import depth_order
from sortednet.cli import info

SUB = "depth=2,ffn=0.5"


def ids(n=7):
    return torch.randint(0, 64, (2, n), generator=torch.Generator().manual_seed(1))


def test_the_named_orders_and_their_nesting():
    assert depth_order.ranking(None, 4) == (0, 1, 2, 3)
    assert depth_order.ranking("every_other", 6) == (0, 2, 4, 1, 3, 5)
    assert depth_order.ranking("influence", 4, [0.1, 0.4, 0.2, 0.3]) == (1, 3, 2, 0)
    order = depth_order.ranking([3, 0, 2, 1], 4)
    assert [depth_order.kept(order, k) for k in (1, 2, 3)] == [(3,), (0, 3), (0, 2, 3)]
    with pytest.raises(
        ValueError, match=r"^nesting.depth_order=\[0, 0, 1, 2\] is not an order of this model's"
    ):
        depth_order.ranking([0, 0, 1, 2], 4)


@pytest.mark.parametrize(
    "space, message",
    [
        (
            {"depth": [2, 4], "depth_order": "random"},
            r"^nesting.depth_order='random' is unknown; allowed: prefix",
        ),
        (
            {"ffn": [0.5, 1.0], "depth_order": "every_other"},
            r"depth_order='every_other' is set but depth is not",
        ),
        ({"depth": [2, 4], "depth_order": ["a"]}, r"is not a list of layer indices"),
    ],
)
def test_bad_orders_are_refused_in_one_line(space, message):
    with pytest.raises(ValueError, match=message):
        sn.NestingSpace(space)


def test_a_sub_model_that_skips_layers_is_its_kept_layers_everywhere(tmp_path):
    nested = sn.nest(llama4(), sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0], depth_order=[3, 1, 0, 2]))
    assert nested.kept(SUB) == (1, 3)
    x = ids()
    with torch.no_grad():
        full = nested(input_ids=x).logits
        with nested.use(SUB):
            got = nested(input_ids=x).logits
        small = nested.extract(SUB)
        assert small.config.num_hidden_layers == 2 and small.num_parameters() == nested.num_params(SUB)
        assert torch.equal(small(input_ids=x).logits, got)
        assert torch.equal(nested.draft(SUB)(input_ids=x).logits, got)
        nested.save(tmp_path / "m.safetensors")
        assert sn.read_metadata(tmp_path / "m.safetensors")["depth_order"] == {
            "method": "given",
            "ranking": [3, 1, 0, 2],
        }
        loaded = sn.load(tmp_path / "m.safetensors")
        assert loaded.ranking == (3, 1, 0, 2)
        with loaded.use(SUB):
            assert torch.equal(loaded(input_ids=x).logits, got)
        assert torch.equal(sn.load_submodel(tmp_path / "m.safetensors", SUB)(input_ids=x).logits, got)
        assert torch.equal(nested(input_ids=x).logits, full)  # back at the largest: every layer index its own
    assert [layer.self_attn.layer_idx for layer in nested.model.model.layers] == [0, 1, 2, 3]


def test_generation_with_the_kv_cache_matches_the_exported_model():
    nested = sn.nest(llama4(), sn.NestingSpace(depth=[2, 4], ffn=[0.5, 1.0], depth_order="every_other"))
    prompt = ids(5)[:1]
    with torch.no_grad(), nested.use(SUB):
        tokens = nested.generate(prompt, max_new_tokens=6, do_sample=False)
    small = nested.extract(SUB)
    assert torch.equal(tokens, small.generate(prompt, max_new_tokens=6, do_sample=False))


def test_mixed_sliding_and_full_layers_keep_their_own_masks_and_caches():
    """Gemma 2 alternates sliding-window and full attention and picks a layer's mask by its place in the loop."""
    config = T.Gemma2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=3,
    )
    torch.manual_seed(0)
    model = T.Gemma2ForCausalLM(config).eval()
    nested = sn.nest(model, sn.NestingSpace(depth=[2, 4], depth_order=[0, 2, 1, 3]))
    x, prompt = ids(9), ids(6)[:1]
    small = nested.extract("depth=2")
    assert small.config.layer_types == [config.layer_types[0], config.layer_types[2]]
    with torch.no_grad(), nested.use("depth=2"):
        assert torch.equal(nested(input_ids=x).logits, small(input_ids=x).logits)
        tokens = nested.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(tokens, small.generate(prompt, max_new_tokens=6, do_sample=False))
    assert type(nested.unnest().config.layer_types) is list


def test_influence_ranks_by_block_influence_on_the_calibration_batches():
    model = llama4()
    batches = [{"input_ids": ids()}]
    influence = sn.block_influence(model, batches)
    with pytest.raises(ValueError, match="depth_order=influence ranks the layers by their block influence"):
        sn.nest(llama4(), sn.NestingSpace(depth=[2, 4], depth_order="influence"))
    nested = sn.nest(model, sn.NestingSpace(depth=[2, 4], depth_order="influence"), batches=batches)
    assert list(nested.ranking) == sorted(range(4), key=lambda i: -influence[i])
    assert sn.NestingSpace(depth=[2, 4], depth_order="influence").to_dict()["depth_order"] == "influence"


def test_stage_families_refuse_a_depth_order():
    model = T.ResNetForImageClassification(
        T.ResNetConfig(hidden_sizes=[8, 16], depths=[2, 2], embedding_size=8)
    )
    with pytest.raises(
        ValueError, match=r"keeps the first blocks of every stage.*allowed: depth_order=prefix$"
    ):
        sn.nest(model, sn.NestingSpace(depth=[1, 2], depth_order="every_other"))


@pytest.mark.slow
def test_sortednet_train_keeps_and_records_the_order_and_a_resume_reuses_it(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from sortednet.cli.train import CONF_DIR, run
    from sortednet.train.config import check

    def config(*overrides):
        quick = ["trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.progress=null"]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=[f"run_dir={tmp_path}/run", *quick, *overrides])

    rows = run(
        config("nesting.depth_order=influence", "nesting.reorder_batches=2", "eval_table.max_batches=2")
    )
    assert len(rows) == 18
    assert "nesting.depth_order=influence: layers by importance [" in capsys.readouterr().out
    meta = sn.read_metadata(tmp_path / "run")
    ranking = meta["depth_order"]["ranking"]
    assert meta["depth_order"]["method"] == "influence" and sorted(ranking) == list(range(6))
    assert info.main([str(tmp_path / "run")]) is None
    assert f"influence: layers by importance {ranking}" in capsys.readouterr().out
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumed = check(config(f"ckpt_path={ckpt}", "nesting.depth_order=influence"))
    assert resumed.resumed["depth_order"]["ranking"] == ranking
