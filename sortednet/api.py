"""The public entry points: `nest`, `load`, `load_submodel`, `read_metadata`, `check_family`.

Policy on top of the mechanisms: this module looks a model's family up, runs the quick check of an unverified
family, and dispatches on the kind of many-in-one model. Each kind is one `Kind` in `KINDS` (the functions of
its own module that build, load, read and check it); a new kind is one more entry here, and nothing below
imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from . import conv_nest, hf, nest_header, restore, slicing, testing, testing_stages
from . import nest as nested_kind
from . import reference as ref
from .checkpoint import family_of, resolve, tensor_problems
from .checkpoint import read_metadata as read_file_header
from .depth_order import ranking as ranking_of
from .export import read_submodel
from .families import AnyFamily, StageFamily, family_for
from .importance import block_influence, reorder
from .layers import LayerList, Wrapper
from .many import Kind, ManyInOneModel
from .pooling import pooled_refusal
from .spec import NestingSpace, Subnet
from .stitch import export as stitch_export
from .stitch import model as stitched_kind


def _empty_nested(meta: Mapping[str, Any]) -> nested_kind.NestedModel:
    """A nested model as the header says, parameters on the meta device; the checkpoint's family is checked
    like any family not marked verified."""
    model = hf.empty_model(hf.model_class(meta["model_class"]), hf.config_from_dict(meta["config"]))
    options = meta.get("options") or {}
    return nest(
        model,
        NestingSpace.from_dict(meta["space"]),
        family=family_of(meta),
        pooling=options.get("pooling"),
        head=options.get("head"),
        bn=options.get("bn"),
        ranking=(meta.get("depth_order") or {}).get("ranking"),
    )


def depth_ranking(order: str, influence: Sequence[float]) -> tuple[int, ...]:
    return ranking_of(order, len(influence), influence)


def _load_nested(path: Path, meta: Mapping[str, Any]) -> nested_kind.NestedModel:
    return restore.fill(_empty_nested(meta), path, meta)


KINDS: dict[str, Kind] = {
    nested_kind.KIND: Kind(
        name=nested_kind.KIND,
        takes=lambda family: not isinstance(family, StageFamily),
        nest=nested_kind.nest_layers,
        empty=_empty_nested,
        load=_load_nested,
        read_submodel=read_submodel,
        check_header=nest_header.check_header,
        check_family=testing.check_layers,
        quick_check=testing.quick_check,
    ),
    conv_nest.KIND: Kind(
        name=conv_nest.KIND,
        takes=lambda family: isinstance(family, StageFamily),
        nest=conv_nest.nest_stages,
        empty=_empty_nested,
        load=_load_nested,
        read_submodel=conv_nest.read_stage_submodel,
        check_header=nest_header.check_header,
        check_family=testing_stages.check_stages,
    ),
    stitched_kind.KIND: Kind(
        name=stitched_kind.KIND,
        takes=lambda family: False,  # made by sortednet.stitch, from anchors
        nest=None,
        empty=stitched_kind.stitched_from_header,
        load=stitched_kind.load_stitched,
        read_submodel=stitch_export.read_member,
        check_header=stitched_kind.check_header,
    ),
}


def kind_of(meta: Mapping[str, Any]) -> Kind:
    """The kind a checkpoint header describes (headers written before `kind` was stored: from the family)."""
    name = meta.get("kind") or ("stages" if (meta.get("family") or {}).get("kind") == "stages" else "nested")
    if name not in KINDS:
        raise ValueError(f"checkpoint kind {name!r} is unknown to this sortednet; known: {', '.join(KINDS)}")
    return KINDS[name]


def kind_for(family: AnyFamily) -> Kind:
    return next(kind for kind in KINDS.values() if kind.takes(family))


def nest(
    model: nn.Module,
    space: NestingSpace | str | Mapping[str, Any],
    *,
    family: AnyFamily | None = None,
    check: bool | None = None,
    pooling: str | None = None,
    head: str | None = None,
    bn: str | None = None,
    order: str | None = None,
    batches: Iterable[Mapping[str, Any]] = (),
    loss: Callable[[nn.Module, Mapping[str, Any]], Any] | None = None,
    ranking: Sequence[int] | None = None,
) -> nested_kind.NestedModel:
    """Wrap `model` in place so that every subnet of `space` can run; at the largest it is unchanged.

    `order="activation" | "magnitude" | "taylor"`: first permute FFN neurons, heads (and hidden channels) by
    importance on calibration `batches` (sortednet.reorder; `loss(model, batch)` for taylor), so that each
    sub-model keeps the units that matter; the function is unchanged and the record is in
    `metadata["permutation"]`. A space with `rank` is factorised from the weights, so its plain model is
    reordered first; any other is reordered through its wrappers (with the pooling it is nested with).

    `pooling="mean"`: the model's own first-token head (BERT's pooler, RoBERTa's classification head) reads the
    masked mean of the last hidden states instead of [CLS] (sortednet.pooling), for encoders trained that way.

    `head="per_depth"`: every depth of the space gets its own copy of the head (sortednet.heads); a sub-model
    counts and exports only its own.

    `family` defaults to the one registered for `config.model_type`. A family not marked `verified` is first
    checked on a tiny random model of the same class (`sortednet.testing.quick_check`, well under a second,
    once per process); `check=True` runs that check for any family, `check=False` skips it.

    Stage-based vision families (ResNet, ConvNeXt, Swin) nest `channels`, per-stage `depth` and `ffn`
    (sortednet.conv_nest); `bn="switchable"` gives each smaller width its own BatchNorm (Slimmable), else
    calibrate the statistics of each subnet with `sortednet.calibrate` (US-Nets)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"nest() takes a transformers PreTrainedModel; got {type(model).__name__}")
    if isinstance(model, ManyInOneModel) or any(isinstance(m, (Wrapper, LayerList)) for m in model.modules()):
        raise ValueError("model is already nested; nest the original model once (or call unnest() first)")
    if not isinstance(space, NestingSpace):
        space = NestingSpace.parse(space) if isinstance(space, str) else NestingSpace(dict(space))
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "base_model"):
        raise ValueError(f"nest() takes a transformers PreTrainedModel; got {type(model).__name__}")
    family = family or family_for(config)
    kind = kind_for(family)
    verify = None
    if kind.quick_check is not None and (check or (check is None and not family.verified)):

        def verify(dims: tuple[str, ...]) -> None:
            kind.quick_check(family, model, dims, kind)  # type: ignore[misc]

    assert kind.nest is not None
    batches = list(batches)
    if space.depth_order == "influence" and ranking is None:
        if not batches:
            raise ValueError(
                "nesting.depth_order=influence ranks the layers by their block influence on calibration "
                "batches; give them: nest(model, space, batches=...)"
            )
        ranking = depth_ranking("influence", block_influence(model, batches))
    record = None
    if order is not None and "rank" in space.dims:
        record = reorder(model, batches, method=order, dims=space.dims, loss=loss)
    nested = kind.nest(
        model, space, family, pooling=pooling, head=head, bn=bn, verify=verify, ranking=ranking
    )
    if order is not None and record is None:
        record = reorder(nested, batches, method=order, loss=loss)
    if record is not None:
        nested.metadata["permutation"] = record
    return nested


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a sortednet checkpoint (a file or a run folder), its fields checked for its kind; a
    one-line error for anything else, a damaged header included."""
    path = resolve(path)
    meta = read_file_header(path)
    kind_of(meta).check_header(path, meta)
    return meta


def load(path: str | os.PathLike) -> ManyInOneModel:
    """Rebuild the many-in-one model (every member) from a one-file checkpoint or a run folder."""
    path = resolve(path)
    meta = read_metadata(path)
    kind = kind_of(meta)
    try:
        return kind.load(path, meta)
    except (RuntimeError, ValueError):  # the tensors disagree with the header: say where, in one line
        check_tensors(path, meta)
        raise


def check_tensors(
    path: str | os.PathLike, meta: Mapping[str, Any], model: ManyInOneModel | None = None
) -> None:
    """A one-line ValueError when the file's tensors (names, shapes, float or not) are not those of the model
    its header describes (a damaged or hand-edited file); reads the header, builds the model on the meta
    device (or takes `model`, built so)."""
    problems = tensor_problems(path, meta, (model or kind_of(meta).empty(meta)).tensors())
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(
            f"checkpoint {str(resolve(path))!r} has a damaged header: its tensors disagree with its model: "
            f"{problems[0]}{more}"
        )


def load_submodel(path: str | os.PathLike, subnet: Subnet | str) -> nn.Module:
    """One member of a checkpoint (or a slice of its slicing config, by name) on its own, reading only its bytes where the kind can: a nested sub-model as
    a plain transformers model (kept layers renumbered); one whose layers have different sizes, which no plain
    config says, as the loaded nested model with that member active; a stitched checkpoint's anchor as a plain
    model, a stitch as a one-member StitchedModel."""
    path = resolve(path)
    meta = read_metadata(path)
    if (meta.get("options") or {}).get("pooling") == "mean":
        raise ValueError(pooled_refusal("load_submodel()", meta["model_class"]))
    kind = kind_of(meta)
    if isinstance(subnet, str) and "=" not in subnet and meta.get("slices"):  # a slice's name
        subnet = slicing.find(meta["slices"], subnet)
    if kind.name != stitched_kind.KIND and Subnet.parse(subnet).per_layer:
        model = kind.empty(meta)  # no plain config says layers of different sizes: the nested model runs it
        if not model.space.plan(subnet).uniform:
            loaded = kind.load(path, meta)
            loaded.activate(subnet)
            return loaded
    try:
        return kind.read_submodel(path, meta, subnet)
    except (RuntimeError, ValueError):
        check_tensors(path, meta)
        raise


def check_family(
    config_or_model_type: Any,
    dims: Iterable[str] | None = None,
    *,
    family: AnyFamily | None = None,
    model_class: type | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> testing.FamilyReport:
    """Check `family` (default: the registered one) on a tiny random model built from a config object or a
    `model_type` string; `dims` defaults to every dimension the family nests. Config overrides (e.g.
    `sliding_window=4`) are applied to the tiny config. Raises FamilyCheckError (one line) on the first
    failure; returns the measured differences."""
    config = testing.base_config(config_or_model_type)
    family = family or family_for(config)
    kind = kind_for(family)
    cls = model_class or ref.default_model_class(config)
    assert kind.check_family is not None
    return kind.check_family(config, family, cls, dims, seed, kind, **config_overrides)
