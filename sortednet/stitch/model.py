"""stitch(): join a family of pretrained models (anchors) with stitching layers; StitchedModel: switch, save."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .. import hf
from ..checkpoint import damaged
from ..families import family_for
from ..layers import LayerList, replace
from ..many import ManyInOneModel
from .anchors import AnchorKind, check_anchors, embeddings_of, kind_of, layer_list, parts_of
from .config import StitchConfig
from .fit import fit_stitches
from .layers import Route, StitchingLayer, route_embeddings, unroute_embeddings
from .space import AnchorInfo, Stitch, StitchSpace

KIND = "stitched"  # the checkpoint header's `kind`


def stitch(
    anchors: Sequence[nn.Module] | Mapping[str, nn.Module],
    calibration: Iterable[Mapping[str, Any]] | None = None,
    *,
    config: StitchConfig | None = None,
    max_batches: int | None = None,
    members: Sequence[Stitch | str] | None = None,
    **options: Any,
) -> StitchedModel:
    """A StitchedModel over `anchors` (a list: named a0, a1, ... from the smallest; a mapping: your names),
    e.g. `sn.stitch({"small": deit_s, "large": deit_b}, calibration=loader)`.

    The anchors are ordered by parameter count; stitches join anchors adjacent in that order (`config`, or its
    fields as keyword arguments: mode, window, stride, share, lora_rank, lora_alpha, ridge; see StitchConfig).
    With `calibration` (batches of model inputs; labels are dropped), each stitching layer is the least-squares
    map from the front anchor's hidden state at its cut to the back anchor's at its resume point (SN-Net), the
    mean of those maps for a layer shared by several; without, nn.Linear's random init. `members` (names of the
    full space's members): a space of only these. The anchors are used in place (not copied); each stays
    callable as it was."""
    config = config or StitchConfig(**options)
    if isinstance(anchors, Mapping):
        names, models = list(anchors), list(anchors.values())
    else:
        models = list(anchors)
        names = [f"a{i}" for i in range(len(models))]
    kind = check_anchors(models, names)  # every refusal before anything changes
    sizes = [sum(p.numel() for p in m.parameters()) for m in models]
    order = sorted(range(len(models)), key=lambda i: sizes[i])
    if not isinstance(anchors, Mapping):
        names = [f"a{rank}" for rank in range(len(models))]
        models = [models[i] for i in order]
    else:
        names, models = [names[i] for i in order], [models[i] for i in order]
    stitched = StitchedModel(dict(zip(names, models, strict=True)), config, kind, members)
    if calibration is not None:
        fit_stitches(stitched, calibration, max_batches)
    return stitched


class StitchedModel(ManyInOneModel):
    """Anchors (transformers models, smallest first) and the stitching layers between them; `use(stitch)` picks
    the network that runs (see sortednet.stitch.space for the spelling)."""

    def __init__(
        self,
        anchors: Mapping[str, nn.Module],
        config: StitchConfig,
        kind: AnchorKind,
        members: Sequence[Stitch | str] | None = None,
    ) -> None:
        super().__init__()
        self.anchors = nn.ModuleDict(dict(anchors))
        self.config, self.kind = config, kind
        infos = [AnchorInfo(n, len(layer_list(m)), int(m.config.hidden_size)) for n, m in anchors.items()]
        self.space = StitchSpace(infos, config, members)
        self.route = Route(infos[-1].name)
        lists = {}
        for name, model in anchors.items():
            lists[name] = LayerList(layer_list(model))
            replace(model.base_model, family_for(model.config).layers, lists[name])
            route_embeddings(embeddings_of(model, kind), self.route, name, self._embeddings)
        self.__dict__["_lists"] = lists  # the anchors' layer lists (modules of the anchors, not of this one)
        widths = {i.name: i.width for i in infos}
        self.stitches = nn.ModuleDict(
            {
                key: StitchingLayer(widths[front], widths[back], config.lora_rank, config.lora_alpha)
                for key, (front, back) in self.space.layers().items()
            }
        )
        like = next(anchors[infos[-1].name].parameters())
        self.stitches.to(dtype=like.dtype, device=like.device)  # float64 or bf16 anchors get stitches alike
        self.space.bind({n: parts_of(m, kind) for n, m in anchors.items()})
        self._switch_cache: dict[Any, tuple[Stitch, str, str, tuple[nn.Module, ...] | None]] = {}
        self._active = self.activate(self.space.largest)

    def _embeddings(self, name: str) -> nn.Module:
        return embeddings_of(self.anchors[name], self.kind)

    # ---- switching ----------------------------------------------------------------------------
    def activate(self, member: Stitch | str) -> Stitch:
        """Make `member` the network that runs: sets the route and the host's layer list to the route's blocks
        (each segment's blocks, a stitching layer between segments), copies nothing."""
        cached = self._switch_cache.get(member)
        if cached is None:
            normal = self.space.normalize(member)
            if normal.is_anchor:
                cached = (normal, normal.front, normal.front, None)
            else:
                layers = [self.stitches[key] for key in self.space.layer_keys(normal)]
                blocks: list[nn.Module] = []
                for i, (name, start, stop) in enumerate(normal.segments):
                    blocks += [layers[i - 1]] if i else []
                    blocks += self._lists[name].every_layer()[start:stop]
                cached = (normal, normal.host, normal.front, tuple(blocks))
            self._switch_cache[member] = cached
        self._active, host, start, blocks = cached
        self._lists[self.route.host].active = None
        self._lists[host].active = blocks
        self.route.set(host, start)
        return self._active

    @contextmanager
    def alone(self, name: str) -> Iterator[nn.Module]:
        """Anchor `name` as itself (its own layers and embeddings) inside the block, whatever member is active."""
        route, layers = self.route, self._lists[name]
        saved = (route.host, route.start, layers.active)
        route.set(name, name)
        layers.active = None
        try:
            yield self.anchors[name]
        finally:
            layers.active = saved[2]
            route.set(saved[0], saved[1])

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.kind.name == "decoder" and not self._active.is_anchor:
            if kwargs.get("use_cache"):
                raise ValueError(
                    f"use_cache=True with stitch {self._active}: a KV cache holds one anchor's layers"
                )
            kwargs["use_cache"] = False
        return self.anchors[self.route.host](*args, **kwargs)

    @property
    def host_model(self) -> nn.Module:
        """The transformers model whose forward runs the active member (the back anchor, or the anchor itself)."""
        return self.anchors[self.route.host]

    def layer_host(self) -> tuple[nn.Module, Any]:
        """The largest anchor (block influence reads its layers)."""
        host = self.anchors[self.space.normalize(self.space.largest).front]
        return host, family_for(host.config)

    def summary(self) -> list[tuple[str, str]]:
        rows = [
            (
                f"anchor {name}",
                f"{type(m).__name__} ({m.config.model_type}): depth={m.config.num_hidden_layers}, "
                f"hidden={m.config.hidden_size}",
            )
            for name, m in self.anchors.items()
        ]
        options = ", ".join(f"{k}={v}" for k, v in self.config.to_dict().items())
        return [*rows, ("stitch space", f"{options}  ->  {len(self.space)} networks")]

    # ---- anchors out --------------------------------------------------------------------------
    def anchor(self, name: str) -> nn.Module:
        """A plain copy of anchor `name` (its class, config and current weights; no stitching machinery)."""
        if name not in self.anchors:
            raise ValueError(f"anchor {name!r} is unknown; allowed: {', '.join(self.anchors)}")
        source = self.anchors[name]
        plain = type(source)(copy.deepcopy(source.config))
        plain.load_state_dict(source.state_dict())
        return plain.to(next(source.parameters()).device).eval()

    # ---- checkpoint ---------------------------------------------------------------------------
    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """`anchors.<name>.<the anchor's own key>` and `stitches.<stitch>.<weight|bias|lora_a|lora_b>`."""
        return self.state_dict()

    def header(self, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "kind": KIND,
            "anchors": [
                {"name": n, "model_class": hf.class_path(m), "config": m.config.to_dict()}
                for n, m in self.anchors.items()
            ],
            "space": self.space.to_dict(),
            "stitch": self.config.to_dict(),
            **self.metadata,
            **(metadata or {}),
        }

    def unstitch(self) -> dict[str, nn.Module]:
        """Remove the routing and give back the anchors as plain transformers models (trained weights)."""
        for name, model in self.anchors.items():
            replace(model.base_model, family_for(model.config).layers, self._lists[name].unwrapped())
            unroute_embeddings(embeddings_of(model, self.kind))
        return dict(self.anchors.items())


def stitched_from_header(meta: Mapping[str, Any], empty: bool = True) -> StitchedModel:
    """An unfilled StitchedModel as the header describes it (anchors built with meta-device parameters)."""
    anchors = {}
    for entry in meta["anchors"]:
        config = hf.config_from_dict(entry["config"])
        cls = hf.model_class(entry["model_class"])
        anchors[entry["name"]] = model = hf.empty_model(cls, config) if empty else cls(config)
        model.tie_weights()  # before the parts are counted: a tied head is counted once in its anchor
    model_type = next(iter(anchors.values())).config.model_type
    kind = kind_of(model_type)
    if kind is None:
        raise ValueError(
            f"stitched checkpoint: anchor model_type={model_type!r} cannot be stitched by this sortednet"
        )
    return StitchedModel(anchors, StitchConfig.from_dict(meta["stitch"]), kind, meta["space"].get("members"))


def load_stitched(path: Path, meta: Mapping[str, Any]) -> StitchedModel:
    """Rebuild a stitched model from its one-file checkpoint (`sortednet.load` calls this for kind=stitched)."""
    stitched = stitched_from_header(meta)
    aliases = meta.get("aliases", {})
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(aliases.get(key, key)) for key in stitched.state_dict(keep_vars=True)}
    stitched.load_state_dict(tensors, strict=True, assign=True)
    for model in stitched.anchors.values():
        model.tie_weights()
    stitched.eval()
    stitched.metadata = {k: v for k, v in meta.items() if k not in STITCHED_OWN_KEYS}
    return stitched


STITCHED_OWN_KEYS = {
    "format",
    "version",
    "kind",
    "anchors",
    "space",
    "stitch",
    "aliases",
    "nonfinite",
    "huge",
    "_keys",
}


def check_header(path: Path, meta: Mapping[str, Any]) -> None:
    """A stitched model's header: its anchors' classes and configs, its stitch space."""
    anchors, space = meta.get("anchors"), meta.get("space")
    problem = None
    if not isinstance(anchors, list) or len(anchors) < 2:
        problem = "field 'anchors' is not a list of two or more anchors"
    elif not all(
        isinstance(a, dict)
        and isinstance(a.get("name"), str)
        and isinstance(a.get("model_class"), str)
        and isinstance(a.get("config"), dict)
        and isinstance(a["config"].get("model_type"), str)
        for a in anchors
    ):
        problem = "an entry of 'anchors' lacks its name, model_class or config"
    elif not isinstance(space, dict) or not isinstance(space.get("stitch"), list):
        problem = "field 'space' is not a stitch space"
    elif not isinstance(meta.get("stitch"), dict):
        problem = "field 'stitch' is missing"
    if problem:
        raise damaged(path, problem)
