"""`SliceCache`: per-slice decoder inputs of one volume, kept from first to last scheduled use within bounds."""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Mapping


def nbytes(item: Any) -> int:
    """Bytes of an array, or of a mapping of arrays (the factorised decoder's prepared tensors)."""
    if isinstance(item, Mapping):
        return sum(int(v.nbytes) for v in item.values())
    return int(item.nbytes)


class SliceCache:
    """Items by slice (embeddings, or prepared decoder tensors), at most `capacity` and `budget` bytes at once.

    `uses[z]` lists, in order, the steps that read slice z; `consume(z)` marks one done, and a slice
    with no use left is dropped at once. When a new slice does not fit, the cached slice needed
    farthest ahead is dropped (Belady's rule, optimal for a known schedule), so a slice is encoded
    twice only when more slices are needed at the same time than the bounds hold. One slice is always held.
    """

    def __init__(self, capacity: int, uses: dict[int, deque[int]], budget: int | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.budget = budget
        self.uses = uses
        self._items: dict[int, Any] = {}
        self._bytes: dict[int, int] = {}
        self._largest = 0

    def __contains__(self, z: int) -> bool:
        return z in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def held_bytes(self) -> int:
        return sum(self._bytes.values())

    def slots(self) -> int:
        """How many slices fit at once: `capacity`, or fewer where `budget` holds fewer of the largest seen."""
        if self.budget is None or not self._largest:
            return self.capacity
        return max(1, min(self.capacity, self.budget // self._largest))

    def get(self, z: int) -> Any:
        return self._items[z]

    def _next_use(self, z: int) -> float:
        return self.uses[z][0] if self.uses.get(z) else math.inf

    def _full(self, size: int) -> bool:
        over_budget = self.budget is not None and self.held_bytes + size > self.budget
        return len(self._items) >= self.capacity or over_budget

    def put(self, z: int, item: Any) -> None:
        self._drop(z)
        size = nbytes(item)
        self._largest = max(self._largest, size)
        while self._items and self._full(size):
            self._drop(max(self._items, key=self._next_use))
        self._items[z], self._bytes[z] = item, size

    def _drop(self, z: int) -> None:
        self._items.pop(z, None)
        self._bytes.pop(z, None)

    def consume(self, z: int) -> None:
        """One scheduled use of slice z is done; forget the slice after its last one."""
        self.uses[z].popleft()
        if not self.uses[z]:
            self._drop(z)
