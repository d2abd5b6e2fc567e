"""What a run tells the user: sortednet's own lines on stdout (rank 0 only, so that a distributed run says each
thing once) and, with Lightning's messages, in the run folder's train.log; the third-party lines that need no
action left out, each by its own text.

Left out: Lightning's tip to install litlogger; its note that `limit_val_batches=1.0` uses 100% of the batches;
and the deprecation warning that Lightning's own `_pytree.py` triggers in torch (`isinstance(treespec,
LeafSpec)`): nothing a sortednet user can change.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

LOG = logging.getLogger("sortednet")
RECORD = logging.getLogger("sortednet.record")  # for train.log only: what the console showed in its own form
LIGHTNING = ("lightning.pytorch", "lightning.fabric")
NOISE = re.compile(
    r"Tip: For seamless cloud logging|`Trainer\(limit_val_batches=1\.0\)` was configured so 100%"
)

warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged (a test's capture, a benchmark's redirect)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


class _Quiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not NOISE.search(record.getMessage())


def _setup() -> None:
    if LOG.handlers:
        return
    console = _Stdout()
    console.setFormatter(logging.Formatter("%(message)s"))
    LOG.addHandler(console)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    RECORD.propagate = False
    RECORD.setLevel(logging.INFO)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_Quiet())


def say(line: str) -> None:
    """One line for the user (and the run's train.log)."""
    if rank_zero_only.rank == 0:
        _setup()
        LOG.info(line)


def log_to(path: Path) -> logging.Handler:
    """Write sortednet's and Lightning's messages to `path` too; returns the handler."""
    _setup()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    handler.addFilter(_Quiet())
    for name in (LOG.name, RECORD.name, *LIGHTNING):
        logging.getLogger(name).addHandler(handler)
    return handler


def record(text: str) -> None:
    """Text for train.log only (a table the console printed with rich)."""
    if rank_zero_only.rank == 0:
        _setup()
        RECORD.info(text)


def stop_logging(handler: logging.Handler) -> None:
    for name in (LOG.name, RECORD.name, *LIGHTNING):
        logging.getLogger(name).removeHandler(handler)
    handler.close()


@contextmanager
def phase(what: str, total: int | None = None, unit: str = "steps") -> Iterator[Callable[[int], None]]:
    """A phase of a run outside Lightning's loop (anchors or a teacher trained alone, calibration): its line when
    it starts, so a run never sits silent, and on a terminal a progress bar; yields `advance(n=1)`. Rank 0 only."""
    if rank_zero_only.rank != 0:
        yield lambda n=1: None
        return
    say(f"{what}: {total} {unit} ..." if total else f"{what} ...")
    if not sys.stdout.isatty():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(file=sys.stdout), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n=1: bar.advance(task, n)
