"""What a run prints for the user (rank 0 only, so that a distributed run says each thing once)."""

from __future__ import annotations

from lightning.pytorch.utilities import rank_zero_only


def say(line: str) -> None:
    if rank_zero_only.rank == 0:
        print(line, flush=True)
