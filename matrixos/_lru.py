"""The one LRU map of MatrixOS: small and thread-safe, for per-process memos (plans, optimized
trees, schemas, Lance dataset handles, which node caches which file) and, weighted by bytes,
the in-memory ANN indexes of search.

It sits at the bottom of the layers, beside ``errors`` and ``config``, because ``storage``
needs it as much as the engine does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most ``maxsize`` entries and, with ``weigh``, at most ``max_weight`` in total weight;
    the least recently used go first.

    Weights are read afresh whenever entries are evicted, so a value that grows in place (an
    index that took appended rows) counts at its current size. An entry heavier than
    ``max_weight`` on its own is not kept.

    Example:
        >>> memo: LRU[str, int] = LRU(2)
        >>> memo.put("a", 1); memo.put("b", 2); memo.get("a"); memo.put("c", 3)
        1
        >>> memo.get("b") is None
        True
        >>> sized: LRU[str, bytes] = LRU(max_weight=5, weigh=len)
        >>> sized.put("x", b"abc"); sized.put("y", b"de"); sized.put("z", b"f")
        >>> sized.keys()  # 3 + 2 + 1 bytes > 5: the oldest went
        ['y', 'z']
        >>> sized.max_weight = 1
        >>> sized.keys(), sized.weight()
        (['z'], 1)
    """

    def __init__(
        self,
        maxsize: int | None = None,
        *,
        max_weight: int | None = None,
        weigh: Callable[[V], int] | None = None,
    ) -> None:
        if (max_weight is None) != (weigh is None):
            raise TypeError("LRU: max_weight and weigh are given together")
        self.maxsize = maxsize
        self._max_weight = max_weight
        self._weigh = weigh
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        """The keys, least recently used first (a copy: the map may change meanwhile)."""
        return iter(self.keys())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: K, value: V) -> None:
        """Store ``value`` as the most recently used, then evict down to the bounds."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            self._evict()

    def pop(self, key: K) -> V | None:
        """Remove ``key``; its value, or None when it was not there."""
        with self._lock:
            return self._items.pop(key, None)

    def keys(self) -> list[K]:
        """The keys, least recently used first (a copy)."""
        with self._lock:
            return list(self._items)

    def values(self) -> list[V]:
        """The values, least recently used first (a copy)."""
        with self._lock:
            return list(self._items.values())

    def weight(self) -> int:
        """The entries' total weight now (0 without ``weigh``)."""
        with self._lock:
            return self._total()

    @property
    def max_weight(self) -> int | None:
        return self._max_weight

    @max_weight.setter
    def max_weight(self, value: int) -> None:
        """A new weight budget; entries beyond it are evicted at once."""
        if self._weigh is None:
            raise TypeError("LRU: max_weight needs weigh")
        with self._lock:
            self._max_weight = value
            self._evict()

    def _total(self) -> int:
        weigh = self._weigh
        return 0 if weigh is None else sum(weigh(v) for v in self._items.values())

    def _evict(self) -> None:
        if self.maxsize is not None:
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        if self._weigh is None or self._max_weight is None:
            return
        total = self._total()
        while self._items and total > self._max_weight:
            _, old = self._items.popitem(last=False)
            total -= self._weigh(old)
