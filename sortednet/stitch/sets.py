"""The stitch sets by mode (which members a StitchConfig gives), and which stitching layer each join runs.

`snnet` and `snnetv2` are the official configuration sets, as read in the authors' code: SN-Net's
`paired_stitching` / `get_stitch_configs` (ziplab/SN-Net, stitching_deit/utils.py: nearest stitching, anchors
adjacent in size) and SN-Netv2's `get_stitch_configs_bidirection` with the `sl_ids`/`ls_ids`/`lsl_ids`/`sls_ids`
lists of `SNNetv2` (ziplab/SN-Netv2, classification/snnet.py). Both codes index blocks from 0 and run inclusive
ranges; here `cut` counts the front's blocks that run and `resume` is the first block of the next anchor.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import StitchConfig
from .member import AnchorInfo, Stitch


def members(anchors: Sequence[AnchorInfo], config: StitchConfig) -> list[Stitch]:
    """The anchors, then every stitch `config.mode` gives between anchors adjacent in size (smallest first)."""
    out = [Stitch(a.name) for a in anchors]
    for small, large in zip(anchors[:-1], anchors[1:], strict=True):
        if config.mode == "snnet":
            out += snnet(small, large, config.window, config.stride)
        elif config.mode == "snnetv2":
            out += snnetv2(small, large)
        else:
            out += windowed(small, large, config.window, config.stride)
            if config.mode == "two_way":
                out += windowed(large, small, config.window, config.stride)
    return out


def windowed(front: AnchorInfo, back: AnchorInfo, window: int, stride: int) -> list[Stitch]:
    """fast_to_slow: front cut after every `stride`-th block c, back resuming within `window` of the matching
    block round(c x back depth / front depth)."""
    out = []
    for cut in range(1, front.depth + 1, stride):
        match = round(cut * back.depth / front.depth)
        for resume in range(match - window + 1, match + window):
            if 1 <= resume <= back.depth:
                out.append(Stitch(front.name, cut, back.name, resume))
    return out


def snnet_windows(depth: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """SN-Net's paired stitching: (j, k, position) for every pair of block positions j, k (0-based) inside one
    window of `window` positions starting at 0, stride, 2 stride, ...; `position` is the first window holding
    the pair, the stitching layer the pair shares with the window's other new pairs."""
    seen: dict[tuple[int, int], int] = {}
    for position, start in enumerate(range(0, depth, stride)):
        ids = range(start, min(start + window, depth))
        for j in ids:
            for k in ids:
                seen.setdefault((j, k), position)
    return [(j, k, p) for (j, k), p in seen.items()]


def snnet(front: AnchorInfo, back: AnchorInfo, window: int, stride: int) -> list[Stitch]:
    if front.depth != back.depth:
        raise ValueError(
            f"stitch.mode=snnet: anchors {front.name} ({front.depth} blocks) and {back.name} ({back.depth}) "
            "differ in depth; allowed: anchors of one depth (SN-Net's paired stitching), or stitch.mode="
            "fast_to_slow for any depths"
        )
    return [Stitch(front.name, j + 1, back.name, k) for j, k, _ in snnet_windows(front.depth, window, stride)]


def snnetv2(small: AnchorInfo, large: AnchorInfo) -> list[Stitch]:
    """SN-Netv2's bidirectional set for the pair (small, large): small -> large at every cut but after small's
    last block; large -> small at every cut but after large's last block (with unequal depths, after every other
    block); then every route large -> small -> large and small -> large -> small that chains two of those."""
    s, ell = small.depth, large.depth
    if s > ell:
        raise ValueError(
            f"stitch.mode=snnetv2: anchor {small.name} has {s} blocks, more than the larger {large.name}'s "
            f"{ell}; allowed: a smaller anchor no deeper than the larger one"
        )
    ratio = ell // s
    down = [s * i // ell for i in range(ell)]  # nearest-neighbour map of large's blocks onto small's
    sl = [(c, c * ratio) for c in range(1, s)]  # (small's cut, large's resume)
    ls = [(i + 1, down[i] + 1) for i in range(ell - 1) if s == ell or i % 2 == 1]
    out = [Stitch(small.name, c, large.name, r) for c, r in sl]
    out += [Stitch(large.name, c, small.name, r) for c, r in ls]
    out += [
        Stitch(large.name, c1, small.name, r1, c2, large.name, r2)
        for c1, r1 in ls
        for c2, r2 in sl
        if c2 - 1 >= r1  # small runs at least one block: r1 .. c2 - 1
    ]
    out += [
        Stitch(small.name, c1, large.name, r1, c2, small.name, r2)
        for c1, r1 in sl
        for c2, r2 in ls
        if c2 - 1 >= r1
    ]
    return out


def layer_key(join: Stitch, config: StitchConfig) -> str:
    """The stitching layer a join runs (its name under `stitches.`): the join's own, or its position's."""
    if config.share == "stitch":
        return str(join)
    if config.mode == "snnet":
        return f"{join.front}>{join.back}@{window_position(join.cut - 1, join.resume, config)}"  # type: ignore[operator, arg-type]
    return f"{join.front}:{join.cut}>{join.back}"


def window_position(j: int, k: int, config: StitchConfig) -> int:
    """The first of SN-Net's windows that holds block positions j and k (every earlier window added pairs)."""
    low, high = min(j, k), max(j, k)
    position = max(0, -(-(high - config.window + 1) // config.stride))
    if position * config.stride > low:
        raise ValueError(f"blocks {j} and {k} share no window of {config.window} with stride {config.stride}")
    return position
