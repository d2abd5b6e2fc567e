"""What sortednet-export, sortednet-select and sortednet-info share: one-line errors, budgets, checkpoints."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn

# exit codes: 2 bad input (nothing written), 1 a valid question with no answer (no subnet meets the budget)
BAD_INPUT, NO_ANSWER = 2, 1


class Refusal(Exception):
    """A valid request that has no answer; exits with code 1."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: `prog: error: message` (no usage block), exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(BAD_INPUT)


def command(prog: str) -> Callable[[Callable[[Sequence[str] | None], Any]], Callable[..., None]]:
    """Wrap a main(argv): user errors become one line on stderr and a non-zero exit."""

    def wrap(main: Callable[[Sequence[str] | None], Any]) -> Callable[..., None]:
        @wraps(main)
        def run(argv: Sequence[str] | None = None) -> None:
            try:
                main(argv)
            except Refusal as err:
                print(f"{prog}: {' '.join(str(err).split())}", file=sys.stderr)
                sys.exit(NO_ANSWER)
            except (ValueError, FileNotFoundError, FileExistsError) as err:
                if os.environ.get("SORTEDNET_DEBUG"):  # the traceback instead of the line
                    raise
                print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
                sys.exit(BAD_INPUT)

        return run

    return wrap


_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}
_AMOUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]?)\s*$")


def parse_amount(option: str, text: str) -> float:
    """'30M' -> 3e7, '2G' -> 2e9, '1.5e6' -> 1.5e6 (suffixes K, M, G or B, T; any case)."""
    match = _AMOUNT.match(str(text))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _SUFFIX:
        raise ValueError(
            f"{option} {text!r} is not a number with an optional K/M/G/T suffix; example: {option} 30M"
        )
    value = float(match.group(1)) * _SUFFIX[unit]
    if value <= 0:
        raise ValueError(f"{option} {text!r} is not above 0")
    return value


def parse_ms(option: str, text: str) -> float:
    """'5' or '5ms' -> 5.0 (milliseconds)."""
    match = re.match(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ms)?\s*$", str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{option} {text!r} is not a positive number of milliseconds; example: {option} 5")
    return float(match.group(1))


def open_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the .safetensors path, its metadata) of a checkpoint file or run folder; one-line errors otherwise."""
    import sortednet as sn

    from ..checkpoint import resolve

    file = resolve(path)
    return file, sn.read_metadata(file)


def refuse_diverged(path: Path, meta: Mapping[str, Any], tensors: Mapping[str, Any] | None = None) -> None:
    """A diverged run's weights (NaN or inf, or of magnitude over 1e6: the header's lists, and `tensors` when
    given) are never chosen or exported."""
    from ..checkpoint import HUGE, absurd

    nonfinite, huge = list(meta.get("nonfinite") or []), list(meta.get("huge") or [])
    if tensors is not None:
        more = absurd(tensors)
        nonfinite, huge = nonfinite + more[0], huge + more[1]
    for names, what in (
        (nonfinite, "non-finite weights"),
        (huge, f"absurd weights (magnitude over {HUGE:g})"),
    ):
        if names:
            shown = ", ".join(sorted(set(names))[:3]) + (" ..." if len(set(names)) > 3 else "")
            raise ValueError(
                f"checkpoint {str(path)!r} has {what} ({shown}): the run diverged; use an earlier checkpoint or "
                "retrain with a lower optim.lr"
            )


EXPORT_RECORD = "sortednet.json"  # what sortednet-export writes into every folder it makes


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def earlier_export(folder: Path) -> set[str] | None:
    """The files an earlier sortednet-export wrote into `folder` (its record lists them), or None."""
    import json

    try:
        record = json.loads((folder / EXPORT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    return set(files) if isinstance(files, list) and all(isinstance(f, str) for f in files) else None


def check_out_dir(out: str | Path, force: bool = False, protect: Sequence[Path] = ()) -> Path:
    """An export folder that can be written without deleting anything sortednet did not write: new, empty, or
    (with --force) an earlier export holding only its own files. Never the current folder, one above it, or
    a folder that holds one of `protect` (the run, the checkpoint)."""
    out = Path(out)
    where = out.resolve()
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        raise ValueError(
            f"--out {str(out)!r} is the current folder or one above it; give a new folder, e.g. --out small/"
        )
    for path in protect:
        path = Path(path).resolve()
        if where == path or where in path.parents:
            raise ValueError(f"--out {str(out)!r} holds {str(path)!r}; give a folder outside it")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a folder")
    present = files_under(out) if out.is_dir() else set()
    if not present:
        return out
    written = earlier_export(out)
    if written is None:
        raise FileExistsError(
            f"--out {str(out)!r} is not empty and is not an earlier sortednet export; sortednet never deletes "
            "files it did not write: give a new or empty folder"
        )
    foreign = sorted(present - written)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise FileExistsError(
            f"--out {str(out)!r} holds an earlier export and files it did not write ({shown}); "
            "sortednet never deletes those: give a new or empty folder"
        )
    if not force:
        raise FileExistsError(f"--out {str(out)!r} holds an earlier export; give --force to replace it")
    return out
