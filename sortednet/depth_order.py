"""Which layers a depth-k sub-model keeps: the first k of a ranking, in their original sequence.

Layers cannot be permuted (their sequence is the function), but a depth-k sub-model can keep any k of them.
`nesting.depth_order` says which: `prefix` (the first k, SortedNet), `every_other` (0, 2, 4, ..., then 1, 3,
5, ...: at half depth DynaBERT's layers), `influence` (the layers that change the hidden states most first:
block influence, 1 - cos(input, output), on calibration batches; Minitron, ShortGPT) or a ranking given as a
list of layer indices, most important first. A smaller depth's layers are always a subset of a larger one's.
"""

from __future__ import annotations

from collections.abc import Sequence

Ranking = tuple[int, ...]


def ranking(
    order: str | Sequence[int] | None, layers: int, influence: Sequence[float] | None = None
) -> Ranking:
    """Every layer index once, most important first, for a model of `layers` layers."""
    if order is None or order == "prefix":
        return tuple(range(layers))
    if order == "every_other":
        return (*range(0, layers, 2), *range(1, layers, 2))
    if order == "influence":
        if influence is None or len(influence) != layers:
            raise ValueError(
                "nesting.depth_order=influence needs the block influence of every layer, measured on "
                "calibration batches: nest(model, space, batches=...)"
            )
        return tuple(sorted(range(layers), key=lambda i: -influence[i]))
    given = tuple(int(i) for i in order)  # type: ignore[union-attr]
    if sorted(given) != list(range(layers)):
        raise ValueError(
            f"nesting.depth_order={list(given)} is not an order of this model's {layers} layers; allowed: each "
            f"of 0..{layers - 1} once, most important first"
        )
    return given


def kept(order: Ranking, depth: int) -> Ranking:
    """The layers a depth-`depth` sub-model runs, in their original sequence."""
    return tuple(sorted(order[:depth]))


def position(order: Ranking) -> list[int]:
    """Per layer, its place in the ranking: layer i runs at depth k when position[i] < k."""
    places = [0] * len(order)
    for place, layer in enumerate(order):
        places[layer] = place
    return places


def is_prefix(order: Ranking) -> bool:
    return order == tuple(range(len(order)))


class LayerTypes(list):
    """`config.layer_types` of a nested model. HF models pick a layer's attention mask by its place in the loop
    (`causal_mask_mapping[config.layer_types[i]]`), so while a sub-model that skips layers is active, entry i
    answers for its i-th kept layer. Iteration, `len` and JSON see the model's own list."""

    kept: tuple[int, ...] | None = None

    def __getitem__(self, index):  # type: ignore[override]
        kept = self.kept
        if kept is None or isinstance(index, slice):
            return super().__getitem__(index)
        return super().__getitem__(kept[index])


def record(order: str | Sequence[int] | None, ranking: Ranking) -> dict[str, object]:
    """What a checkpoint's header records of the depth order: nothing for the first-k prefix."""
    if is_prefix(tuple(ranking)):
        return {}
    method = order if isinstance(order, str) else "given"
    return {"depth_order": {"method": method, "ranking": list(ranking)}}
