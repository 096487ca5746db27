"""`SliceCache`'s byte budget: prepared decoder tensors are ~7x an embedding, so the budget, not a count, binds."""
from __future__ import annotations

from collections import deque

import numpy as np

from medsamlite.runtime.slice_cache import SliceCache, nbytes


def test_the_byte_budget_evicts_the_slice_needed_farthest_ahead() -> None:
    uses = {z: deque([z, 10 + z]) for z in range(4)}
    cache = SliceCache(64, uses, budget=3 * 1000)
    assert cache.slots() == 64  # nothing seen yet
    for z in range(3):
        cache.put(z, {"a": np.zeros(200, np.float32), "b": np.zeros(50, np.float32)})  # 1000 bytes each
    assert len(cache) == 3 and cache.held_bytes == 3000 and cache.slots() == 3
    cache.put(3, {"a": np.zeros(250, np.float32)})
    assert 2 not in cache and all(z in cache for z in (0, 1, 3))  # slice 2 is needed last
    assert cache.held_bytes <= 3000


def test_one_slice_is_held_even_over_budget() -> None:
    cache = SliceCache(4, {0: deque([0]), 1: deque([1])}, budget=10)
    cache.put(0, np.zeros(100))
    cache.put(1, np.zeros(100))
    assert len(cache) == 1 and 1 in cache and cache.slots() == 1
    assert nbytes({"x": np.zeros(3, np.float32)}) == 12
