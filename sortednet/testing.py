"""check_family: is a Family right for a transformers architecture? It must be right or say no.

On a tiny random model of the architecture, for subnets of every nested dimension:
  the largest subnet equals the original bit for bit;
  `use(subnet)` and `extract(subnet)` equal an independently built reference: the plain transformers class
    built from the smaller config, with weights cut by this module's own rule (a prefix along every axis whose
    size changed; per-block prefixes in fused projections). It never calls Family.slices or build_submodel;
    the only facts it takes from the family are which config key holds each size, the block order of fused
    projections and which projections take the heads' output;
  where the class derives its head size (hidden / heads) and so cannot have fewer heads, `use()` is compared
    with the full-heads reference whose dropped heads' outputs are zeroed (extract() refuses such subnets);
  `num_params` is exact; the one-file save / load / load_submodel round trip is bit-exact; greedy generation
    (decoders) gives the same tokens;
  `rank`: each projection at rank r equals the reference whose weights are their own rank-r SVD.
A cheap form (`quick_check`: two layers, the largest and the smallest subnet, no generation, no files) runs
inside `nest()` for a family not marked `verified`.

The public entry is `sortednet.check_family` (sortednet.api), which picks the check of the family's kind
(this module: layer families; sortednet.testing_stages: stage families) and hands it the kind's own nest, load
and read functions, so that the checks never import the entry points they check.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

from . import reference as ref
from .checkpoint import family_of, read_metadata
from .families import Family
from .many import Kind
from .spec import NestingSpace, Subnet

__all__ = ["FamilyCheckError", "FamilyReport", "check_layers", "quick_check"]

TOLERANCE = 1e-5  # max abs difference allowed between a sub-model and its reference (fp32)
# factorised projections run U[:, :r] (V[:r] x), the reference (U S)[:, :r] Vh[:r] x: rounding differs
RANK_TOLERANCE = 1e-4
CHECKED_DIMS = ("depth", "heads", "ffn", "hidden", "rank")


class FamilyCheckError(ValueError):
    """A family gives wrong outputs (or cannot be checked) for an architecture; the message is one line."""


@dataclass
class FamilyReport:
    """What check_family measured: the largest difference seen per check, and what it could not check."""

    family: str
    model_class: str
    dims: tuple[str, ...]
    subnets: int = 0
    diffs: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def record(self, check: str, diff: float) -> None:
        self.diffs[check] = max(self.diffs.get(check, 0.0), diff)

    def __str__(self) -> str:
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in self.diffs.items())
        text = f"{self.family} ({self.model_class}, {', '.join(self.dims)}; {self.subnets} subnets): {diffs}"
        return text + "".join(f"; skipped {s}" for s in self.skipped)


def check_layers(
    config: Any,
    family: Family,
    cls: type,
    dims: Iterable[str] | None,
    seed: int,
    kind: Kind,
    **config_overrides: Any,
) -> FamilyReport:
    """The full check of a layer family on a tiny random model built from `config` (overrides such as
    `sliding_window=4` applied to the tiny config); `dims` defaults to every dimension the family nests. Raises
    FamilyCheckError (one line) on the first failure; returns the measured differences."""
    dims = _checked_dims(family, dims)
    checker = _Checker(family, cls, config, kind, depth=4, seed=seed, overrides=config_overrides)
    return checker.run(dims, quick=False)


_QUICK_RESULTS: dict[str, str | None] = {}


def quick_check(family: Family, model: nn.Module, dims: Iterable[str], kind: Kind) -> None:
    """The cheap form of check_family that `nest()` runs for a family not marked verified: a two-layer tiny
    model of the same class and config, the largest and the smallest subnet. Once per process per family,
    class, config and dimensions."""
    dims = tuple(d for d in CHECKED_DIMS if d in set(dims) and d in family.dims)
    config = model.config.to_dict()
    key = json.dumps([family.to_dict(), type(model).__name__, dims, config], sort_keys=True, default=str)
    if key not in _QUICK_RESULTS:
        try:
            _Checker(family, type(model), model.config, kind, depth=2, seed=0).run(dims, quick=True)
            _QUICK_RESULTS[key] = None
        except FamilyCheckError as err:
            _QUICK_RESULTS[key] = (
                f"nest() checked {err}; fix the family (its dims, layer_attrs, projections) "
                f"or pass check=False to skip the check"
            )
    if _QUICK_RESULTS[key]:
        raise FamilyCheckError(_QUICK_RESULTS[key])


def base_config(source: Any) -> Any:
    """A transformers config from a config object or a `model_type` string (one-line FamilyCheckError)."""
    if isinstance(source, str):
        try:
            config = transformers.AutoConfig.for_model(source)
        except ValueError:
            raise FamilyCheckError(
                f"model type {source!r} is not known to transformers {transformers.__version__}"
            ) from None
    elif hasattr(source, "to_dict") and hasattr(source, "model_type"):
        config = source
    else:
        raise FamilyCheckError(
            f"check_family takes a transformers config or a model_type string; got {type(source).__name__}"
        )
    return config


def _checked_dims(family: Family, dims: Iterable[str] | None) -> tuple[str, ...]:
    wanted = tuple(family.dims if dims is None else dims)
    for dim in wanted:
        family.check_dim(dim)
    return tuple(d for d in CHECKED_DIMS if d in wanted)


class _Checker:
    """One run of the checks. `self.stage` names what runs, so that any error becomes one line saying where."""

    def __init__(
        self,
        family: Family,
        cls: type,
        config: Any,
        kind: Kind,
        depth: int,
        seed: int,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.family, self.cls, self.kind, self.seed = family, cls, kind, seed
        try:
            self.config, self.full = ref.tiny_config(config, family, depth, overrides or {})
        except Exception as err:
            raise FamilyCheckError(
                f"family {family.name!r}: cannot build a tiny {cls.__name__} config: {_one_line(err)}"
            ) from None
        f = self.full
        self.name = (
            f"family {family.name!r} on a tiny {cls.__name__} (depth={f['depth']},hidden={f['hidden']},"
            f"heads={f['heads']},ffn={f['ffn']})"
        )

    def fail(self, what: str) -> FamilyCheckError:
        return FamilyCheckError(f"{self.name}: {self.stage}: {what}")

    def compare(self, check: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
        if got.shape != want.shape:
            raise self.fail(f"output shape {tuple(got.shape)} != reference {tuple(want.shape)}")
        diff = (got.float() - want.float()).abs().max().item()
        self.report.record(check, diff)
        if not diff <= tol:  # also catches NaN
            raise self.fail(f"{check} differ by {diff:.3g} (allowed {tol:g})")

    def run(self, dims: tuple[str, ...], quick: bool) -> FamilyReport:
        start = time.perf_counter()
        self.report = FamilyReport(self.family.name, self.cls.__name__, dims)
        self.stage = "building the tiny model"
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny matrices: more threads only wait on each other
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                self._run(dims, quick)
        except FamilyCheckError:
            raise
        except Exception as err:  # the model code itself failed on a sub-model: say where, in one line
            raise self.fail(f"{type(err).__name__}: {_one_line(err)}") from None
        finally:
            torch.set_num_threads(threads)
        self.report.seconds = time.perf_counter() - start
        return self.report

    def _run(self, dims: tuple[str, ...], quick: bool) -> None:
        self.model = ref.random_model(self.cls, self.config, self.seed)
        self.batch = ref.tiny_inputs(self.model, self.config, self.seed)
        self.state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.original = ref.output(self.model, self.batch)
        self.report.record("max |output|", self.original.abs().max().item())
        nested_dims = tuple(d for d in dims if d != "rank")
        if nested_dims:
            self.check_nested(nested_dims, quick)
        if "rank" in dims:
            self.check_rank(quick)

    # ---- depth, heads, ffn, hidden -------------------------------------------------------------
    def space(self, dims: tuple[str, ...]) -> NestingSpace:
        full, group = self.full, self.full["heads"] // self.full["kv_heads"]
        smaller = {
            "depth": full["depth"] // 2,
            "heads": max(group, full["heads"] // 2),
            "ffn": full["ffn"] // 2,
            "hidden": full["hidden"] // 2,
        }
        return NestingSpace({d: [smaller[d], full[d]] for d in dims})

    def check_nested(self, dims: tuple[str, ...], quick: bool) -> None:
        self.stage = "nest()"
        nested = self.kind.nest(self.model, self.space(dims), self.family)
        self.stage = "largest subnet vs the original model"
        self.compare("largest vs original", ref.output(nested, self.batch), self.original, 0.0)
        subnets = [nested.space.smallest] if quick else nested.space.subnets()[:-1]
        for subnet in subnets:
            self.check_subnet(nested, subnet, generate=not quick)
        self.report.subnets += len(subnets) + 1
        if not quick:
            self.check_round_trip(nested, subnets)
            if "depth" in dims:
                self.check_depth_order()

    def check_depth_order(self) -> None:
        """depth_order=every_other: a sub-model that skips layers against the plain model of its kept layers."""
        self.stage = "nest() with depth_order=every_other"
        depth = self.full["depth"]
        space = NestingSpace(depth=[depth // 2, depth], depth_order="every_other")
        model = ref.random_model(self.cls, self.config, self.seed)
        nested = self.kind.nest(model, space, self.family)
        subnet = Subnet(depth=depth // 2)
        self.check_subnet(nested, subnet, generate=True, layers=ref.every_other(depth, depth // 2))
        self.check_round_trip(nested, [subnet])
        self.report.subnets += 1

    def sizes(self, subnet: Subnet) -> dict[str, int]:
        return {**self.full, **{d: int(v) for d, v in subnet.items()}}

    def check_subnet(
        self, nested: Any, subnet: Subnet, generate: bool, layers: list[int] | None = None
    ) -> None:
        sizes = self.sizes(subnet)
        self.stage = f"subnet {subnet} under use()"
        with nested.use(subnet):
            got = ref.output(nested, self.batch)
        self.stage = f"subnet {subnet}, its plain reference"
        plain = ref.expressible(self.family, self.full, sizes)
        reference = ref.reference_model(
            self.cls, self.config, self.family, self.full, sizes, self.state, layers
        )
        if reference is None:
            self.report.skipped.append(
                f"{subnet} (no plain {self.cls.__name__} has a hidden size of {sizes['hidden']} "
                f"with {sizes['heads']} heads of {self.full['head_dim']})"
            )
            return
        want = ref.output(reference, self.batch)
        self.stage = f"subnet {subnet}"
        self.compare(
            "use() vs reference" if plain else "use() vs heads-zeroed reference", got, want, TOLERANCE
        )
        if plain:
            self.stage = f"subnet {subnet}, extract()"
            self.compare(
                "extract() vs reference", ref.output(nested.extract(subnet), self.batch), want, TOLERANCE
            )
            if nested.num_params(subnet) != reference.num_parameters():
                raise self.fail(
                    f"num_params {nested.num_params(subnet)} != the reference's {reference.num_parameters()}"
                )
            self.report.record("num_params diff", 0.0)
        if generate and ref.can_generate(self.cls):
            self.stage = f"subnet {subnet}, greedy generation"
            prompt = self.batch["input_ids"][1:]
            with nested.use(subnet):
                tokens = ref.greedy(nested, prompt)
            if not torch.equal(tokens, ref.greedy(reference, prompt)):
                raise self.fail("the tokens differ from the reference model's")
            self.report.record("generate mismatches", 0.0)

    def check_round_trip(self, nested: Any, subnets: list[Subnet]) -> None:
        exportable = [s for s in subnets if ref.expressible(self.family, self.full, self.sizes(s))]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "family.safetensors"
            self.stage = "save() and load()"
            nested.save(path)
            meta = read_metadata(path)
            if family_of(meta) != self.family:
                raise self.fail("the checkpoint header does not give back the family")
            loaded = self.kind.load(path, meta)
            for subnet in [nested.space.largest, *subnets[:1]]:
                self.stage = f"subnet {subnet} after save() and load()"
                with nested.use(subnet), loaded.use(subnet):
                    a, b = ref.output(loaded, self.batch), ref.output(nested, self.batch)
                self.compare("load() vs nested", a, b, 0.0)
            for subnet in exportable[:1]:
                self.stage = f"subnet {subnet} from load_submodel()"
                a = ref.output(self.kind.read_submodel(path, meta, subnet), self.batch)
                b = ref.output(nested.extract(subnet), self.batch)
                self.compare("load_submodel() vs extract()", a, b, 0.0)

    # ---- rank -----------------------------------------------------------------------------------
    def check_rank(self, quick: bool) -> None:
        self.stage = "rank at full size vs the original model"
        model = ref.random_model(self.cls, self.config, self.seed)
        space = NestingSpace(rank=[4, 8, self.full["hidden"]])
        nested = self.kind.nest(model, space, self.family)
        got = ref.output(nested, self.batch)
        self.compare("full rank vs original", got, self.original, RANK_TOLERANCE)
        for rank in [4] if quick else [4, 8]:
            subnet = Subnet(rank=rank)
            self.stage = f"subnet {subnet}"
            reference, factored = ref.low_rank_reference(self.cls, self.config, self.family, self.state, rank)
            with nested.use(subnet):
                got = ref.output(nested, self.batch)
            self.compare("rank use() vs reference", got, ref.output(reference, self.batch), RANK_TOLERANCE)
            small = ref.output(nested.extract(subnet), self.batch)
            self.compare("rank extract() vs use()", small, got, TOLERANCE)
            if nested.num_params(subnet) != factored:
                raise self.fail(f"num_params {nested.num_params(subnet)} != {factored} counted by hand")
            self.report.subnets += 1


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
