"""The shipped recipes as torchtune ships its recipes: list them, copy one to edit, run the copy.

    sortednet-train --list                          # every recipe with its one-line description
    sortednet-train --copy digits_vit mine.yaml     # a copy to edit
    sortednet-train --config mine.yaml trainer.max_steps=100    # run it (overrides as usual)

A recipe is an experiment file (`# @package _global_`) composed over the shipped config groups; `--config`
puts the file where Hydra's `experiment` group finds it (a folder of its own added to hydra.searchpath), so a
user's recipe composes with the shipped model/, data/, nesting/ ... groups exactly as a shipped one does.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # in a checkout: a link to the top-level conf/
RECIPES = CONF_DIR / "experiment"


def names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def summary(path: Path) -> str:
    """A recipe's one-line description: the comment line under its `# Launch:` line."""
    for line in path.read_text().splitlines()[1:]:
        if line.startswith("#") and not line.startswith("# Launch:"):
            return line.lstrip("# ").strip()
    return ""


def list_recipes() -> None:
    shown = names()
    width = max(map(len, shown))
    for name in shown:
        print(f"{name.ljust(width)}  {summary(RECIPES / f'{name}.yaml')}")
    print(
        "\nrun one: sortednet-train experiment=NAME; copy one to edit: sortednet-train --copy NAME FILE.yaml"
    )


def copy_recipe(name: str, dest: str) -> None:
    source, target = RECIPES / f"{name}.yaml", Path(dest)
    if not source.is_file():
        raise ValueError(f"--copy {name!r} is not a recipe; recipes: {', '.join(names())}")
    if target.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--copy destination {dest!r} must end in .yaml")
    if target.exists():
        raise FileExistsError(f"--copy destination {dest!r} exists; sortednet does not overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"wrote {target}; edit it, then: sortednet-train --config {target}")


def config_overrides(path: str) -> list[str]:
    """Hydra overrides that run the recipe file at `path` as `experiment=<its name>`."""
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"--config {path!r} does not exist")
    if source.suffix not in (".yaml", ".yml"):
        raise ValueError(f"--config {path!r} is not a .yaml recipe")
    folder = Path(tempfile.mkdtemp(prefix="sortednet-recipe-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "experiment").mkdir()
    (folder / "experiment" / f"{source.stem}.yaml").symlink_to(source.resolve())
    return [f"hydra.searchpath=[file://{folder}]", f"experiment={source.stem}"]


def handle(argv: list[str]) -> list[str] | None:
    """Act on --list / --copy (returns None: nothing to train), or rewrite --config into Hydra overrides."""
    if not argv or argv[0] not in ("--list", "--copy", "--config"):
        return argv
    flag, rest = argv[0], argv[1:]
    try:
        if flag == "--list":
            list_recipes()
            return None
        if flag == "--copy":
            if len(rest) != 2:
                raise ValueError("--copy takes a recipe name and a destination: --copy digits_vit mine.yaml")
            copy_recipe(*rest)
            return None
        if not rest:
            raise ValueError("--config takes a recipe file: --config mine.yaml [overrides ...]")
        return [*config_overrides(rest[0]), *rest[1:]]
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"sortednet-train: error: {err}", file=sys.stderr)
        sys.exit(2)
