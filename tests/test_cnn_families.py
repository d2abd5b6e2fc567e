"""Convolutional families (ResNet basic/bottleneck, ConvNeXt): exactness per block type, depthwise groups,
one-line refusals, switching without copies, switchable BatchNorm, BatchNorm calibration and the one file."""

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tiny import STAGE_BUILDERS, assert_switching_copies_nothing

import sortednet as sn
from sortednet import conv_layers, testing
from sortednet.conv_layers import SlicedBatchNorm2d

SPACE = sn.NestingSpace(channels=[0.25, 0.5, 1.0], depth=[1, 2])


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = STAGE_BUILDERS[name]().eval()
    with torch.no_grad():  # BatchNorm statistics off their init, so that slicing them is tested
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def pixels(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "model_type,overrides",
    [("resnet", {"layer_type": "basic"}), ("resnet", {"layer_type": "bottleneck"}), ("convnext", {})],
)
def test_check_family_per_block_type(model_type, overrides):
    config = T.AutoConfig.for_model(model_type, **overrides)
    report = sn.check_family(config)
    print(report)
    assert report.diffs["largest vs original"] == 0
    assert report.diffs["use() vs reference"] <= testing.TOLERANCE
    assert report.diffs["extract() vs reference"] <= testing.TOLERANCE
    assert report.diffs["load_submodel() vs extract()"] == 0


def test_exported_submodel_is_a_plain_smaller_model(tmp_path):
    nested = sn.nest(build("resnet-bottleneck"), SPACE)
    small = nested.extract("channels=0.5,depth=1")
    assert type(small) is T.ResNetForImageClassification
    assert small.config.hidden_sizes == [8, 16, 32] and small.config.depths == [1, 1, 1]
    assert small.config.embedding_size == 8 and small.config.layer_type == "bottleneck"
    small.save_pretrained(tmp_path)
    again = T.ResNetForImageClassification.from_pretrained(tmp_path).eval()
    x = pixels()
    with torch.no_grad():
        assert torch.equal(again(pixel_values=x).logits, small(pixel_values=x).logits)


def test_depthwise_convs_keep_groups_equal_to_channels(monkeypatch):
    nested = sn.nest(build("convnext"), SPACE)
    calls = []
    conv2d = F.conv2d

    def spy(x, weight, bias, stride, padding, dilation, groups):
        calls.append((x.shape[1], weight.shape[0], groups))
        return conv2d(x, weight, bias, stride, padding, dilation, groups)

    monkeypatch.setattr(conv_layers.F, "conv2d", spy)
    with torch.no_grad(), nested.use("channels=0.25,depth=2"):
        nested(pixel_values=pixels())
    depthwise = [c for c in calls if c[2] > 1]
    assert depthwise and all(c_in == c_out == groups for c_in, c_out, groups in depthwise)
    assert {c[0] for c in depthwise} == {2, 4, 8}  # a quarter of every stage
    small = nested.extract("channels=0.25,depth=2")
    dw = small.convnext.encoder.stages[2].layers[0].dwconv
    assert dw.groups == dw.in_channels == dw.out_channels == 8


@pytest.mark.parametrize(
    "space,words",
    [
        ({"channels": [0.01, 1.0]}, ["channels=0.01", "0 channels", "allowed: a fraction >="]),
        ({"channels": [64]}, ["channels=64", "exceeds", "allowed: 1..32"]),
        ({"ffn": [0.5]}, ["'ffn'", "convnext", "4 x channels", "supports: channels, depth"]),
        ({"depth": [5]}, ["depth=5", "exceeds", "blocks per stage"]),
    ],
)
def test_bad_values_are_refused_in_one_line(space, words):
    model = build("convnext")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        sn.nest(model, space)
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing changed
    assert not any(isinstance(m, conv_layers.SlicedConv2d) for m in model.modules())


def test_channels_fraction_below_one_of_the_space_is_refused_by_the_spec():
    with pytest.raises(ValueError, match=r"channels=1.5 is outside \(0, 1\]"):
        sn.NestingSpace(channels=[1.5])


def test_switching_copies_and_allocates_nothing():
    nested = sn.nest(build("resnet"), SPACE)
    assert_switching_copies_nothing(nested, rounds=2)


def test_unnest_gives_back_the_plain_model():
    model = build("resnet")
    x = pixels()
    with torch.no_grad():
        want = model(pixel_values=x).logits
        plain = sn.nest(model, SPACE).unnest()
        assert type(plain.resnet.encoder.stages[0].layers) is torch.nn.Sequential
        assert torch.equal(plain(pixel_values=x).logits, want)


def loader(n_batches: int = 4, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [{"pixel_values": 2 * torch.randn(8, 1, 16, 16, generator=g) + 1} for _ in range(n_batches)]


def test_calibration_changes_statistics_and_travels_through_export_and_the_file(tmp_path):
    nested = sn.nest(build("resnet"), SPACE)
    subnet = "channels=0.5,depth=1"
    x = pixels()
    with torch.no_grad(), nested.use(subnet):
        before = nested(pixel_values=x).logits
    stem = nested.model.resnet.embedder.embedder.normalization
    shared = stem.base_layer.running_mean.clone()
    stats = sn.calibrate(nested, subnet, loader(), batches=3)
    assert torch.equal(stem.base_layer.running_mean, shared)  # the shared statistics are left alone
    mean, var = stats["resnet.embedder.embedder.normalization"]
    assert mean.shape == (4,) and not torch.allclose(mean, shared[:4])
    with torch.no_grad(), nested.use(subnet):
        after = nested(pixel_values=x).logits
        assert (after - before).abs().max() > 1e-3
        small = nested.extract(subnet)
        assert (small(pixel_values=x).logits - after).abs().max() <= 1e-5
        assert torch.equal(small.resnet.embedder.embedder.normalization.running_mean, mean)
        with nested.use("channels=1.0,depth=2"):  # an uncalibrated subnet keeps the shared statistics
            assert stem.stats is None
    nested.save(tmp_path / "run.safetensors")
    loaded = sn.load(tmp_path / "run.safetensors")
    lazy = sn.load_submodel(tmp_path / "run.safetensors", subnet)
    with torch.no_grad(), loaded.use(subnet):
        assert torch.equal(loaded(pixel_values=x).logits, after)
        assert torch.equal(lazy(pixel_values=x).logits, small(pixel_values=x).logits)


def test_switchable_batchnorm_keeps_a_private_norm_per_width(tmp_path):
    model = build("resnet")
    x = pixels()
    with torch.no_grad():
        want = model(pixel_values=x).logits
    nested = sn.nest(model, SPACE, bn="switchable")
    stem = nested.model.resnet.embedder.embedder.normalization
    assert isinstance(stem, SlicedBatchNorm2d) and sorted(stem.private) == ["2", "4"]
    with torch.no_grad():
        assert torch.equal(nested(pixel_values=x).logits, want)
    nested.train()
    with nested.use("channels=0.25,depth=1"):
        nested(pixel_values=x).logits.sum().backward()
    assert stem.private["2"].weight.grad is not None and stem.private["4"].weight.grad is None
    assert stem.base_layer.weight.grad is None
    assert not torch.equal(stem.private["2"].running_mean, stem.base_layer.running_mean[:2])
    nested.eval()
    for subnet in nested.space.subnets():
        with torch.no_grad(), nested.use(subnet):
            small = nested.extract(subnet)
            assert (small(pixel_values=x).logits - nested(pixel_values=x).logits).abs().max() <= 1e-5
            assert nested.num_params(subnet) == small.num_parameters()
    nested.save(tmp_path / "run.safetensors")
    lazy = sn.load_submodel(tmp_path / "run.safetensors", "channels=0.25,depth=1")
    with torch.no_grad(), nested.use("channels=0.25,depth=1"):
        assert torch.equal(lazy(pixel_values=x).logits, nested(pixel_values=x).logits)
    assert sn.read_metadata(tmp_path / "run.safetensors")["options"] == {"bn": "switchable"}


def test_flops_shrink_with_the_subnet():
    from sortednet.measure import count_flops

    nested = sn.nest(build("resnet"), SPACE)
    flops = [count_flops(nested, s, {"pixel_values": pixels(1)}) for s in nested.space.subnets()]
    assert flops[0] < flops[-1] / 4 and all(f > 0 for f in flops)
