"""The one LRU map (matrixos/_lru.py): bounded by count, or by a weight read at eviction time."""

from __future__ import annotations

import threading

import pytest

from matrixos._lru import LRU


def test_count_bound_evicts_the_least_recently_used() -> None:
    memo: LRU[str, int] = LRU(2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recent: "b" goes first
    memo.put("c", 3)
    assert memo.keys() == ["a", "c"] and "b" not in memo and len(memo) == 2
    memo.put("a", 10)  # replacing refreshes too
    memo.put("d", 4)
    assert list(memo) == ["a", "d"] and memo.get("a") == 10
    assert memo.pop("a") == 10 and memo.pop("a") is None
    memo.clear()
    assert len(memo) == 0 and memo.get("d") is None


class Growing:
    """A value whose size changes in place (like an ANN index that takes appended rows)."""

    def __init__(self, size: int) -> None:
        self.size = size


def test_weight_bound_reads_weights_at_eviction_time() -> None:
    cache: LRU[str, Growing] = LRU(max_weight=10, weigh=lambda v: v.size)
    a, b = Growing(4), Growing(4)
    cache.put("a", a)
    cache.put("b", b)
    assert cache.weight() == 8 and cache.keys() == ["a", "b"]
    a.size = 7  # grew after it was stored: the next put sees 7 + 4 + 1 > 10
    cache.put("c", Growing(1))
    assert cache.keys() == ["b", "c"] and cache.weight() == 5


def test_an_entry_over_the_whole_budget_is_not_kept() -> None:
    cache: LRU[str, Growing] = LRU(max_weight=10, weigh=lambda v: v.size)
    cache.put("small", Growing(3))
    cache.put("huge", Growing(11))
    assert cache.keys() == []  # the older one went first, then the huge one itself
    cache.put("small", Growing(3))
    assert cache.keys() == ["small"]


def test_lowering_the_budget_evicts_at_once() -> None:
    cache: LRU[str, Growing] = LRU(max_weight=100, weigh=lambda v: v.size)
    for name, size in [("a", 30), ("b", 30), ("c", 30)]:
        cache.put(name, Growing(size))
    cache.get("a")
    cache.max_weight = 60
    assert cache.keys() == ["c", "a"] and cache.max_weight == 60
    cache.max_weight = 0
    assert cache.keys() == []
    with pytest.raises(TypeError):
        LRU(max_weight=5)  # a weight budget needs weigh
    plain: LRU[str, int] = LRU(3)
    with pytest.raises(TypeError):
        plain.max_weight = 5
    assert plain.weight() == 0


def test_threads_share_one_map() -> None:
    memo: LRU[int, int] = LRU(50)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(2_000):
                key = (offset + i) % 200
                memo.put(key, key)
                got = memo.get(key)
                assert got is None or got == key
                list(memo)
        except BaseException as e:  # surfaced below: a thread's assert does not fail the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n * 37,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(memo) == 50 and all(memo.get(k) == k for k in memo)
