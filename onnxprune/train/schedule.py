"""Which samples each step trains on, and the learning-rate factor of each step.

Both are pure functions of (seed, step), so a run resumed from a checkpoint sees exactly
the batches and learning rates of an uninterrupted one without any saved iterator state.
"""

from __future__ import annotations

import math

import numpy as np


class BatchSchedule:
    """Epoch e visits the samples in a permutation drawn from (seed, e); the last batch may be short."""

    def __init__(self, samples: int, batch_size: int, seed: int) -> None:
        self.samples, self.batch_size, self.seed = samples, batch_size, seed
        self.per_epoch = max(1, math.ceil(samples / batch_size))
        self._epoch, self._perm = -1, np.zeros(0, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        epoch, b = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.samples)
        return self._perm[b * self.batch_size: (b + 1) * self.batch_size]


def lr_factor(kind: str, step: int, start: int, total: int, floor: float = 0.01) -> float:
    """Constant before ``start``; from ``start`` to ``total`` constant or cosine down to ``floor``."""
    if kind == "constant" or step < start or total <= start:
        return 1.0
    t = min(1.0, (step - start) / max(1, total - start))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def step_generator(seed: int, step: int, salt: int = 0):  # noqa: ANN201 - torch.Generator
    """A torch generator for the random draws of one step (a pure function of seed and step)."""
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7_919 + salt) % (2**63 - 1))
