"""A training DataLoader whose order is a function of (seed, epoch) and that resumes mid-epoch.

Lightning (2.x) stores `state_dict()` of every train dataloader that has `state_dict`/`load_state_dict` in the
checkpoint (`FitLoop.on_save_checkpoint`, key "combined_loader"), and on `fit(ckpt_path=...)` calls
`load_state_dict` before it creates the epoch's iterator (`FitLoop.setup_data`). It then expects that iterator to
yield only the batches not yet consumed, while `len()` stays the full epoch length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, default_collate
from torch.utils.data.dataloader import DataLoader


class ResumableSampler(DistributedSampler):
    """`DistributedSampler` (shuffled with `torch.Generator().manual_seed(seed + epoch)`) that starts at `start`.

    Works for one process (num_replicas=1) as well as under DDP, where each rank gets its own shard. Being a
    `DistributedSampler`, Lightning does not replace it, and calls its `set_epoch` at each epoch start.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> None:
        ddp = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=dist.get_world_size() if ddp else 1,
            rank=dist.get_rank() if ddp else 0,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.skip = 0  # samples of this epoch's global order already consumed (by all ranks together)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.dataset), generator=g).tolist()  # type: ignore[arg-type]
        else:
            order = list(range(len(self.dataset)))  # type: ignore[arg-type]
        if self.drop_last:
            order = order[: self.total_size]
        else:
            order += (order * (self.total_size // max(len(order), 1) + 1))[: self.total_size - len(order)]
        # rank r's k-th sample is global position r + k * num_replicas (as in DistributedSampler), so the
        # first `skip` positions are what every rank together consumed: resuming on another number of
        # processes continues the same global order
        return iter(order[self.skip :][self.rank :: self.num_replicas])


class ResumableDataLoader(DataLoader):
    """Shuffled training DataLoader with `state_dict()` = {"epoch", "batches", "samples"}: the batches this rank
    handed out this epoch, and the samples all ranks consumed together (so a resume may change the world size).

    After `load_state_dict`, the next iteration over the same epoch skips the batches already consumed (without
    loading them). Counting happens where batches are yielded, so worker prefetching does not inflate it.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        sampler = ResumableSampler(dataset, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate_fn,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            **kwargs,
        )
        self.seed = seed
        self._epoch = 0
        self._batches = 0
        self._samples = 0
        self._resume: dict[str, int] | None = None
        self._resume_samples: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._generate()

    def _generate(self) -> Iterator[Any]:
        # a generator: the body runs at the first next(), i.e. after Lightning's set_epoch for this epoch
        sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
        skip, self._resume_samples = 0, None
        if self._resume is not None:
            if self._resume["epoch"] == sampler.epoch:
                skip, self._resume_samples = self._resume["batches"], self._resume.get("samples")
            self._resume = None
        per_batch = self.batch_size * sampler.num_replicas  # type: ignore[operator]
        samples = self._resume_samples if skip and self._resume_samples is not None else skip * per_batch
        sampler.skip = samples
        self._epoch, self._batches, self._samples = sampler.epoch, skip, samples
        for batch in super().__iter__():
            self._batches += 1
            self._samples += per_batch
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._batches, "samples": self._samples, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"seed: the checkpoint's train dataloader used seed {state_dict['seed']}, this run uses {self.seed}"
            )
        self._resume = {k: int(state_dict[k]) for k in ("epoch", "batches", "samples") if k in state_dict}
        # Lightning calls set_epoch itself, but only after it has created this epoch's iterator
        self.set_epoch(self._resume["epoch"])
        self._epoch, self._batches = self._resume["epoch"], self._resume["batches"]


def eval_loader(
    dataset: Dataset, batch_size: int, collate_fn: Callable | None = None, num_workers: int = 0
) -> DataLoader:
    """Unshuffled loader for validation (keeps the last, partial batch)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation `ResumableSampler` uses on one process (for tests and debugging)."""
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    return torch.randperm(n, generator=g)


def first_batches(data: Any, n: int, epoch: int = 0) -> list[dict[str, torch.Tensor]]:
    """The first `n` training batches of `epoch` as one process would draw them: a function of the data
    module's seed only, so every rank gets the same (calibration before training: importance order, the
    least-squares fit of stitching layers)."""
    train = data.train_set
    order = epoch_order(len(train), data.seed, epoch).tolist()
    size = data.batch_size
    chunks = [order[i : i + size] for i in range(0, min(n * size, len(order) - len(order) % size), size)]
    collate = data.collate_fn or default_collate
    return [collate([train[i] for i in chunk]) for chunk in chunks]
