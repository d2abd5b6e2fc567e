"""sortednet-info: what a one-file checkpoint holds, read from its header (no weights are loaded).

sortednet-info runs/digits_vit/<time>          # a run folder or a .safetensors file
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .tools import Parser, command, open_checkpoint

PROG = "sortednet-info"


def bound_space(meta: Mapping[str, Any]) -> Any:
    """The checkpoint's model built with parameters on the meta device, as its header says (exact parameter
    counts, no weights read)."""
    from ..api import kind_of

    return kind_of(meta).empty(meta)


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(cfg, Mapping) or key not in cfg:
            return None
        cfg = cfg[key]
    return cfg


def training_summary(cfg: Mapping[str, Any], meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    data = cfg.get("data") or {}
    dataset = data.get("dataset") or data.get("data_files")
    sampler = cfg.get("sampler") or {}
    lines = [
        ("run", f"{cfg.get('name')} (seed {cfg.get('seed')})"),
        (
            "model",
            f"{_get(cfg, 'model.class_name')}"
            + (
                f" from {_get(cfg, 'model.pretrained')}" if _get(cfg, "model.pretrained") else " from scratch"
            ),
        ),
        ("data", f"{str(data.get('_target_', '')).rsplit('.', 1)[-1]} {dataset}"),
        ("sampler", ", ".join(f"{k}={v}" for k, v in sampler.items())),
        ("steps", f"{meta.get('global_step')} of trainer.max_steps={_get(cfg, 'trainer.max_steps')}"),
        ("optim", f"lr={_get(cfg, 'optim.lr')} schedule={_get(cfg, 'optim.schedule')}"),
    ]
    if _get(cfg, "train.distill.enabled"):
        lines.append(
            (
                "distill",
                f"in-place, T={_get(cfg, 'train.distill.temperature')} "
                f"alpha={_get(cfg, 'train.distill.alpha')}",
            )
        )
    return lines


def elastic_summary(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The importance order applied before training, and each layer's block influence (what depth cuts cost)."""
    lines = []
    perm = meta.get("permutation")
    if perm:
        data = f" on {perm.get('batches')} calibration batches" if perm.get("batches") else ""
        lines.append(("importance order", f"{perm.get('method')}{data}: {', '.join(perm.get('dims', []))}"))
    order = meta.get("depth_order")
    if order:
        lines.append(("depth order", f"{order.get('method')}: layers by importance {order.get('ranking')}"))
    influence = meta.get("block_influence")
    if influence and influence.get("values"):
        from ..importance import influence_line

        text = influence_line(influence).replace("block influence per layer ", "")
        lines.append(
            ("block influence", f"{text} ({influence.get('batches')} {influence.get('data')} batches)")
        )
    return lines


@command(PROG)
def main(argv: Sequence[str] | None = None) -> None:
    parser = Parser(prog=PROG, description="What a sortednet checkpoint holds (read from its header).")
    parser.add_argument("ckpt", help="a sortednet .safetensors checkpoint or a run folder")
    args = parser.parse_args(argv)
    path, meta = open_checkpoint(args.ckpt)

    from rich.console import Console
    from rich.table import Table

    from ..api import check_tensors
    from ..evaluate import headline_metric
    from ..report import human, pareto_front, print_table

    console = Console()
    console = Console(width=max(console.width, 120))  # a pipe gets 80 columns otherwise
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row(
        "file", f"{path} ({path.stat().st_size / 2**20:.2f} MiB, sortednet format v{meta['version']})"
    )
    model = bound_space(meta)  # parameters on the meta device: the exact costs, no weights
    check_tensors(path, meta, model)
    space = model.space
    for key, value in model.summary():
        grid.add_row(key, value)
    costs = space.costs()
    grid.add_row("smallest", f"{space.subnets()[0]}  ({human(costs[0])} params)")
    grid.add_row("largest", f"{space.subnets()[-1]}  ({human(costs[-1])} params)")
    for key, value in (
        training_summary(meta.get("train_config") or {}, meta) if meta.get("train_config") else []
    ):
        grid.add_row(key, value)
    if not meta.get("train_config"):
        grid.add_row(
            "training", "no train_config in the metadata (saved with NestedModel.save, not sortednet-train)"
        )
    for key, value in elastic_summary(meta):
        grid.add_row(key, value)
    rows = meta.get("eval_table") or []
    info = meta.get("eval_info") or {}
    if info:
        grid.add_row("evaluation", f"{info.get('time')} on {info.get('device')} ({info.get('device_name')})")
    console.print(grid)
    if rows:
        metric, higher = headline_metric(rows)
        front = [str(rows[i]["subnet"]) for i in pareto_front(rows, "params", metric, higher)]
        print_table(
            rows,
            title=f"evaluation table ({len(rows)} sub-models; green: Pareto frontier)",
            metric=metric,
            highlight=front,
        )
    else:
        console.print(f"no evaluation table; run: sortednet-eval ckpt={args.ckpt}")


if __name__ == "__main__":
    main()
