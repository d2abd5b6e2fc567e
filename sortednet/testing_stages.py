"""check_family for stage-based vision families (ResNet, ConvNeXt, Swin): is a StageFamily right? Right or say no.

On a tiny random model (random BatchNorm statistics included), for every subnet of the family's dimensions
(channels, depth, ffn):
  the largest subnet equals the original bit for bit;
  `use(subnet)` (eval) and `extract(subnet)` equal a reference built here without the family's rules: the
    plain class from a config whose every width is multiplied by the channel ratio (the tiny widths divide
    exactly), whose FFN multiple is multiplied by the ffn ratio and whose stages keep min(k, blocks) blocks,
    every tensor the prefix of the full model's tensor of the same key;
  `num_params` is the reference's parameter count; save / load / load_submodel round trip bit-exact.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import read_metadata
from .families.stages import StageFamily
from .many import Kind
from .spec import NestingSpace, Subnet
from .testing import FamilyCheckError, FamilyReport

TOLERANCE = 1e-5
TINY_WIDTHS = [16, 32, 64]  # the channel ratios checked (1/4, 1/2) divide every width
TINY_DEPTHS = [2, 1, 3]
SIZE = 32  # input pixels: Swin needs every stage at least a window wide
RATIOS = {"channels": [0.25, 0.5, 1.0], "depth": [1, 2, 3], "ffn": [0.25, 0.5, 1.0]}


def tiny_stage_config(config: Any, family: StageFamily) -> Any:
    data = config.to_dict()
    for key in family.widths:
        data[key] = list(TINY_WIDTHS) if isinstance(data[key], list) else TINY_WIDTHS[0]
    data[family.depths] = list(TINY_DEPTHS)
    data.update(num_channels=3, num_labels=5, id2label=None, label2id=None)
    for key, value in (("num_stages", 3), ("num_heads", [2, 2, 4]), ("window_size", 2), ("image_size", SIZE)):
        if key in data:  # windows of 2 on 8x8 patches: Swin's shifted windows and their mask run
            data[key] = value
    for key in ("out_features", "out_indices", "stage_names", "hidden_size"):  # derived by the config
        data.pop(key, None)
    return type(config).from_dict(data)


def random_stage_model(cls: type, config: Any, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = cls(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + noise.abs())
            elif t.dim() >= 2:
                t.copy_(noise / t[0].numel() ** 0.5)
            else:
                t.add_(0.1 * noise)
    return model


def reference_model(cls: type, config: Any, family: StageFamily, state: dict, subnet: Subnet):
    """The plain model at channels c of every width, ffn f of the FFN multiple and `depth` blocks per stage,
    weights cut here."""
    num, den = round(subnet.get("channels", 1.0) * 4), 4
    small = copy.deepcopy(config)
    for key in family.widths:
        value = getattr(config, key)
        setattr(
            small, key, [w * num // den for w in value] if isinstance(value, list) else value * num // den
        )
    if subnet.get("ffn") is not None:
        setattr(small, family.ffn_ratio, getattr(config, family.ffn_ratio) * subnet["ffn"])
    depth = int(subnet.get("depth", max(TINY_DEPTHS)))
    setattr(small, family.depths, [min(depth, d) for d in getattr(config, family.depths)])
    model = cls(small).eval()
    cut = {k: state[k][tuple(slice(0, n) for n in v.shape)].clone() for k, v in model.state_dict().items()}
    model.load_state_dict(cut)
    return model


def check_stages(
    config: Any,
    family: StageFamily,
    cls: type,
    dims: Iterable[str] | None,
    seed: int,
    kind: Kind,
    **config_overrides: Any,
) -> FamilyReport:
    """The full check of a stage family; raises FamilyCheckError (one line) on the first failure, returns the
    largest difference per check."""
    if config_overrides:
        raise FamilyCheckError(f"family {family.name!r}: stage families take no config overrides")
    dims = tuple(family.dims if dims is None else dims)
    for dim in dims:
        family.check_dim(dim)
    start = time.perf_counter()
    diffs, n = _check(config, family, cls, dims, seed, kind)
    return FamilyReport(family.name, cls.__name__, dims, n, diffs, seconds=time.perf_counter() - start)


def _check(
    config: Any, family: StageFamily, cls: type, dims: tuple[str, ...], seed: int, kind: Kind
) -> tuple[dict[str, float], int]:
    config = tiny_stage_config(config, family)
    model = random_stage_model(cls, config, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed + 1))
    diffs: dict[str, float] = {}

    def compare(check: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
        diff = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
        diffs[check] = max(diffs.get(check, 0.0), diff)
        if not diff <= tol:
            raise FamilyCheckError(
                f"family {family.name!r} on a tiny {cls.__name__}: {check} differ by {diff:.3g}"
            )

    with torch.no_grad():
        original = model(pixel_values=x).logits
        nested = kind.nest(model, NestingSpace(**{d: RATIOS[d] for d in dims}), family)
        compare("largest vs original", nested(pixel_values=x).logits, original, 0.0)
        subnets = list(nested.space.subnets())
        for subnet in subnets:
            reference = reference_model(cls, config, family, state, subnet)
            want = reference(pixel_values=x).logits
            with nested.use(subnet):
                compare("use() vs reference", nested(pixel_values=x).logits, want, TOLERANCE)
            compare("extract() vs reference", nested.extract(subnet)(pixel_values=x).logits, want, TOLERANCE)
            if nested.num_params(subnet) != reference.num_parameters():
                raise FamilyCheckError(
                    f"family {family.name!r}: num_params({subnet}) {nested.num_params(subnet)} != "
                    f"the reference's {reference.num_parameters()}"
                )
        subnet = subnets[1]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "stages.safetensors"
            nested.save(path)
            meta = read_metadata(path)
            loaded = kind.load(path, meta)
            with nested.use(subnet), loaded.use(subnet):
                compare("load() vs nested", loaded(pixel_values=x).logits, nested(pixel_values=x).logits, 0.0)
            small = kind.read_submodel(path, meta, subnet)(pixel_values=x).logits
            compare("load_submodel() vs extract()", small, nested.extract(subnet)(pixel_values=x).logits, 0.0)
    return diffs, len(subnets)
