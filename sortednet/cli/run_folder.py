"""The run folder at sortednet-train's edge: a path that is a file is refused before Hydra makes it, and a
refused run's folder (with the empty parents Hydra made for it) is removed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig

# the nearest folder above the run folder that existed before Hydra made the run folder and its parents (set by
# main(); None when run() is called directly): a refused config removes the empty parents up to it too
_EXISTING_ABOVE: Path | None = None


def remove_if_empty(run_dir: Path) -> None:
    from ..train.run_lock import LOCK_NAME

    if not run_dir.exists():
        return
    ours = {".hydra", LOCK_NAME}
    if not all(p.name in ours or p.suffix == ".log" for p in run_dir.iterdir()):
        return
    shutil.rmtree(run_dir)
    if _EXISTING_ABOVE is None:
        return
    for parent in run_dir.resolve().parents:  # runs/<name>/ that Hydra made for this run, if left empty
        if parent == _EXISTING_ABOVE or _EXISTING_ABOVE not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()


def check_run_dir(cfg: DictConfig) -> None:
    """Before Hydra makes the run folder: a path that is a file is refused in one line (Hydra's mkdir would end
    in a FileExistsError traceback), and the nearest existing folder above it is noted (_EXISTING_ABOVE)."""
    global _EXISTING_ABOVE
    try:
        run_dir = Path(str(cfg.hydra.run.dir)).resolve()
    except Exception:  # an interpolation only Hydra's app resolves: Hydra's own checks apply
        return
    for path in (run_dir, *run_dir.parents):
        if path.exists() and not path.is_dir():
            print(
                f"sortednet-train: error: hydra.run.dir={str(cfg.hydra.run.dir)[:100]!r}: {str(path)!r} is a "
                "file, not a folder; give a new folder or an existing run folder",
                file=sys.stderr,
            )
            sys.exit(2)
        if path.is_dir():
            _EXISTING_ABOVE = path if path != run_dir else None
            return
