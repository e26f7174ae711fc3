"""Data order: which samples each rank trains on at each step, reproducible after a resume."""

from __future__ import annotations

import numpy as np


class DataOrder:
    """Deterministic epoch-wise shuffles; batch ``step`` of rank ``rank`` depends only on (seed, step)."""

    def __init__(self, n: int, seed: int, per_rank: int, world: int = 1, rank: int = 0):
        self.n, self.seed, self.per_rank, self.world, self.rank = n, seed, per_rank, world, rank
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        # A batch spans at most two epochs, so keeping the last permutation avoids recomputing it per sample.
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def indices(self, step: int) -> list[int]:
        size = self.per_rank * self.world
        start = step * size + self.rank * self.per_rank
        out = []
        for pos in range(start, start + self.per_rank):
            epoch, offset = divmod(pos, self.n)
            out.append(int(self._permutation(epoch)[offset]))
        return out
