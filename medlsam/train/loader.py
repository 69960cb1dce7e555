"""Training batches through a :class:`torch.utils.data.DataLoader`: worker processes draw and
augment the next batches while the GPU trains on the current one.

Every step's batch comes from its own generator, seeded with ``(random_seed, step)``
(:func:`step_rng`), so a batch depends on neither the number of workers nor the order in which
they finish, and resuming at step ``n`` needs no data random state: the loader simply starts
at ``n``. The DataLoader draws its workers' base seed from a generator of its own (seeded too),
never from the global torch generator whose state drives dropout.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medlsam.train.data import Augment, sample_batch

#: a constant mixed into the per-step seeds, so they differ from the other seeded streams
_DATA_STREAM = 3


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of the batch of (0-based) step ``step``."""
    return np.random.default_rng([int(seed), _DATA_STREAM, int(step)])


@dataclass
class StepBatches(Dataset):
    """Item ``n`` is the batch of step ``n`` (:func:`sample_batch` with :func:`step_rng`)."""

    volumes: Sequence[np.ndarray]
    seed: int
    batch_size: int
    augment: Augment
    with_aug: bool
    near_fraction: float = 0.0
    near_mm: float = 60.0

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        return sample_batch(
            self.volumes,
            step_rng(self.seed, step),
            self.batch_size,
            self.augment,
            with_aug=self.with_aug,
            near_fraction=self.near_fraction,
            near_mm=self.near_mm,
        )


def default_workers(device: torch.device, requested: int | None) -> int:
    """``requested``, or 4 on CUDA (bounded by the CPUs) and 0 on the CPU."""
    if requested is not None:
        return int(requested)
    if device.type != "cuda":
        return 0
    import os

    return max(0, min(4, (os.cpu_count() or 1) - 1))


def batches(
    dataset: StepBatches, start: int, stop: int, workers: int, pin_memory: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of steps ``start .. stop - 1``, in order (``workers`` = 0: in this process)."""
    loader = DataLoader(
        dataset,
        batch_size=None,  # items are whole batches
        sampler=range(start, stop),
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(dataset.seed),
    )
    return iter(loader)
