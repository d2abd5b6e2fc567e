"""How often does each member train directly? The sandwich's middle members drawn at random or in a cycle.

    python -m bench.starvation        # under a second

minilm_nested's space (depth {2,4,6} x FFN {0.25,0.5,1}: 9 members), sandwich K=3: the largest and the smallest
train every step, one other member per step. Per middle member over a run's steps: how many steps train it and
the longest run of steps without it, for `sampler.middle=random` and `sampler.middle=cycle`, seeds 0-2.
"""

from __future__ import annotations

from sortednet.sampling import SandwichSampler
from sortednet.spec import NestingSpace

SPACE = {"depth": [2, 4, 6], "ffn": [0.25, 0.5, 1.0]}


def visits(middle: str, steps: int, seed: int) -> dict[str, tuple[int, int]]:
    """member -> (steps that train it, the longest gap between two of them, the run's ends counted)."""
    sampler = SandwichSampler(NestingSpace(**SPACE), k=3, seed=seed, middle=middle)
    seen: dict[str, list[int]] = {str(s): [] for s in sampler.middle}
    for step in range(steps):
        for subnet in sampler.sample(step):
            if str(subnet) in seen:
                seen[str(subnet)].append(step)
    out = {}
    for name, at in seen.items():
        edges = [-1, *at, steps]
        out[name] = (len(at), max(b - a - 1 for a, b in zip(edges, edges[1:], strict=False)))
    return out


def main() -> int:
    print(
        "| steps | middle | seed | steps training a middle member (min-max over the 7) | longest gap (steps) |"
    )
    print("|---|---|---|---|---|")
    for steps in (100, 400):
        for middle in ("random", "cycle"):
            for seed in range(3):
                v = visits(middle, steps, seed)
                counts = [c for c, _ in v.values()]
                print(
                    f"| {steps} | {middle} | {seed} | {min(counts)}-{max(counts)} | {max(g for _, g in v.values())} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
