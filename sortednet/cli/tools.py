"""What sortednet-export, sortednet-select and sortednet-info share: one-line errors, budgets, checkpoints."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
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

    from ..evaluate import checkpoint_path

    file = checkpoint_path(path)
    return file, sn.read_metadata(file)


def check_out_dir(out: str | Path, force: bool = False) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(
            f"--out {str(out)!r} exists and is not empty; give a new or empty folder, or --force"
        )
    return out
