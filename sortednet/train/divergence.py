"""Divergence caught before it is saved: a loss that explodes stops the run before its step is applied, and
weights that are no longer finite or have grown absurd are never written as a checkpoint.

Weights are checked where they are written (`checkpoint.absurd`: NaN or inf, or a magnitude over 1e6):
`checkpoint_io.save_pair` drops a pair whose weights are either and stops the run.

A step's loss has exploded when it is over `factor` times the median of the last `window` finite step losses
(robust to single spikes, and following a loss that falls over training) and also over `factor / 10` times the
median of the first `warmup` steps (a near-zero late loss that jumps stays far below where the run started, so
it does not count). Nothing is decided before `warmup` steps are in. Healthy runs wander by a few times their
median from step to step; an exploding one goes up by orders of magnitude. One such step is skipped (an odd
batch); two in a row stop the run (`SortedNetModule._optimizer_step`), neither applied.
"""

from __future__ import annotations

import statistics
from collections import deque


class Diverged(RuntimeError):
    """The run diverged: optimizer steps in a row with a NaN or inf loss or gradient, a step loss that exploded,
    or weights no longer finite or absurd when a checkpoint was due; it stops (exit code 1), the last saved
    checkpoint as it was."""


class LossWatch:
    """The running record of a run's step losses and the explosion test (see the module's docstring)."""

    def __init__(self, factor: float | None = 100.0, window: int = 50, warmup: int = 10) -> None:
        self.factor, self.warmup = factor, warmup
        self.recent: deque[float] = deque(maxlen=window)
        self.first: list[float] = []

    def exploded(self, loss: float) -> str | None:
        """None for a usual loss (recorded), else what is wrong with it (not recorded)."""
        if self.factor is None or loss != loss:  # off, or NaN: the non-finite guard's business
            return None
        if len(self.first) >= self.warmup:
            recent, start = statistics.median(self.recent), statistics.median(self.first)
            if loss > self.factor * recent and loss > self.factor / 10 * start:
                return (
                    f"the step's loss {loss:.4g} is over {self.factor:g}x the median {recent:.4g} of the last "
                    f"{len(self.recent)} steps and {self.factor / 10:g}x the first steps' {start:.4g}"
                )
        if len(self.first) < self.warmup:
            self.first.append(loss)
        self.recent.append(loss)
        return None
