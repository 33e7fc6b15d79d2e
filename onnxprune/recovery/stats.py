"""Running statistics over calibration batches, in float64: per-channel moments and a fixed
row sample shared by every model that is probed."""

from __future__ import annotations

import numpy as np


class Moments:
    """Per-channel mean and (population) variance of a tensor along ``axis``, over every
    other axis (batch and positions), accumulated batch by batch."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.n = 0
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.moveaxis(np.asarray(x, dtype=np.float64), self.axis, -1)
        x = x.reshape(-1, x.shape[-1])
        s1, s2 = x.sum(0), np.einsum("ij,ij->j", x, x)
        if self.s1 is None:
            self.s1, self.s2 = s1, s2
        else:
            self.s1 += s1
            self.s2 += s2
        self.n += x.shape[0]

    @property
    def mean(self) -> np.ndarray:
        assert self.s1 is not None, "no data"
        return self.s1 / self.n

    @property
    def var(self) -> np.ndarray:
        assert self.s2 is not None, "no data"
        return np.maximum(self.s2 / self.n - self.mean ** 2, 0.0)


class RowSample:
    """A fixed-seed subset of at most ``max_rows`` of the rows a layer sees on the
    calibration set (``rows_per_sample`` rows per sample, sample-major), so that the rows
    taken from two models (original targets, pruned inputs) are the same rows."""

    def __init__(self, samples: int, max_rows: int, seed: int = 0) -> None:
        self.samples = samples
        self.max_rows = max_rows
        self.seed = seed
        self.per_sample: int | None = None
        self.index: np.ndarray | None = None

    def local(self, start_sample: int, samples: int) -> np.ndarray:
        """Indices, within a batch of ``samples`` samples starting at ``start_sample``, of the sampled rows."""
        if self.per_sample is None or self.index is None:
            raise ValueError("call fix(rows_per_sample) first")
        lo, hi = start_sample * self.per_sample, (start_sample + samples) * self.per_sample
        a, b = np.searchsorted(self.index, [lo, hi])
        return self.index[a:b] - lo

    def fix(self, per_sample: int) -> None:
        if self.per_sample is not None:
            if per_sample != self.per_sample:
                raise ValueError(f"rows per sample changed from {self.per_sample} to {per_sample}")
            return
        self.per_sample = per_sample
        total = self.samples * per_sample
        if total <= self.max_rows:
            self.index = np.arange(total)
        else:
            rng = np.random.default_rng(self.seed)
            self.index = np.sort(rng.choice(total, size=self.max_rows, replace=False))
