"""A least-recently-used cache of slice embeddings, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch


class EmbeddingCache:
    """Maps keys (volume identity, axis, slice) to image embeddings, evicting the least recently
    used once the stored tensors exceed ``max_bytes``. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("the embedding cache size cannot be negative")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        size = self._nbytes(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._nbytes(self._items.pop(key))
            if size > self.max_bytes:
                return  # larger than the whole budget: the caller keeps using it uncached
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= self._nbytes(evicted)

    @property
    def free_bytes(self) -> int:
        """Room left before a ``put`` evicts anything."""
        with self._lock:
            return self.max_bytes - self._bytes

    def count_matching(self, predicate: Callable[[Hashable], bool]) -> int:
        """How many stored keys ``predicate`` accepts (hits and misses unchanged)."""
        with self._lock:
            return sum(1 for key in self._items if predicate(key))

    def drop(self, predicate: Callable[[Hashable], bool]) -> int:
        """Remove every entry whose key ``predicate`` accepts; returns the bytes freed."""
        with self._lock:
            doomed = [key for key in self._items if predicate(key)]
            freed = sum(self._nbytes(self._items.pop(key)) for key in doomed)
            self._bytes -= freed
            return freed

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @staticmethod
    def _nbytes(value: torch.Tensor) -> int:
        return value.numel() * value.element_size()
