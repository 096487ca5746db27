"""`SliceCache`: slice embeddings of one volume, kept from first to last scheduled use within a bound."""
from __future__ import annotations

import math
from collections import deque

import numpy as np


class SliceCache:
    """Embeddings by slice, at most `capacity` at once, for a schedule known in advance.

    `uses[z]` lists, in order, the steps that read slice z; `consume(z)` marks one done, and a slice
    with no use left is dropped at once. When a new slice does not fit, the cached slice needed
    farthest ahead is dropped (Belady's rule, optimal for a known schedule), so a slice is encoded
    twice only when more than `capacity` slices are needed at the same time.
    """

    def __init__(self, capacity: int, uses: dict[int, deque[int]]) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.uses = uses
        self._items: dict[int, np.ndarray] = {}

    def __contains__(self, z: int) -> bool:
        return z in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, z: int) -> np.ndarray:
        return self._items[z]

    def _next_use(self, z: int) -> float:
        return self.uses[z][0] if self.uses.get(z) else math.inf

    def put(self, z: int, embedding: np.ndarray) -> None:
        if z not in self._items and len(self._items) >= self.capacity:
            del self._items[max(self._items, key=self._next_use)]
        self._items[z] = embedding

    def consume(self, z: int) -> None:
        """One scheduled use of slice z is done; forget the slice after its last one."""
        self.uses[z].popleft()
        if not self.uses[z]:
            self._items.pop(z, None)
