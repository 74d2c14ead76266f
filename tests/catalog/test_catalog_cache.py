"""The catalog's change counter and the cache it guards (matrixos/catalog/cache.py), on every
backend: SQLite, PostgreSQL and the object-store log.

Two catalog objects on one database stand for two processes (nothing is shared in memory
between them); tests/engine/test_plan_cache.py runs the same through SQL in a second process.
"""

from __future__ import annotations

from matrixos.catalog import TableIdent, TableInfo, open_catalog
from matrixos.catalog.base import AccountInfo, GrantInfo
from matrixos.catalog.cache import CatalogCache
from matrixos.catalog.policies import FILTER, Policy, PolicyStore

T = TableIdent.parse("s.t")


def _info(location: str, owner: str = "alice") -> TableInfo:
    return TableInfo(T, "delta", location, owner=owner)


def test_the_counter_moves_on_every_change_but_a_data_commit(catalog_url: str) -> None:
    cat = open_catalog(catalog_url)
    try:
        n0 = cat.changes()
        assert n0 is not None
        cat.create_schema("main", "s")
        n1 = cat.changes()
        assert n1 != n0
        assert cat.changes() == n1  # reading moves nothing
        cat.create_table(_info("file:///x/t-1"))
        n2 = cat.changes()
        assert n2 != n1
        cat.touch(T)  # a data commit: not a catalog change for the cache
        if "catalog-log" not in catalog_url:  # the log records a touch as a commit of its own
            assert cat.changes() == n2
        cat.update_table(_info("file:///x/t-1", owner="bob"))
        n3 = cat.changes()
        assert n3 != n2
        cat.drop_table(T)
        n4 = cat.changes()
        assert n4 != n3
        cat.create_account(AccountInfo("carol"))
        n5 = cat.changes()
        assert n5 != n4
        cat.add_grant(GrantInfo("SELECT", "schema", "main.s", "carol"))
        assert cat.changes() != n5
    finally:
        cat.close()


def test_a_change_by_another_process_is_seen_by_the_next_lookup(catalog_url: str) -> None:
    mine, theirs = open_catalog(catalog_url), open_catalog(catalog_url)
    cache = CatalogCache(mine)
    try:
        assert cache.find_table(T) is None
        theirs.create_schema("main", "s")
        theirs.create_table(_info("file:///x/t-1"))
        assert cache.get_table(T).location == "file:///x/t-1"
        hits = cache.hits
        assert cache.get_table(T).owner == "alice"
        assert cache.hits == hits + 1  # served from memory: the counter did not move
        theirs.update_table(_info("file:///x/t-1", owner="bob"))
        assert cache.get_table(T).owner == "bob"
        # dropped and created again elsewhere: a new location
        theirs.drop_table(T)
        assert cache.find_table(T) is None
        theirs.create_table(_info("file:///x/t-2"))
        assert cache.get_table(T).location == "file:///x/t-2"
    finally:
        mine.close()
        theirs.close()


def test_policies_are_cached_until_another_process_changes_one(sql_catalog_url: str) -> None:
    mine, theirs = open_catalog(sql_catalog_url), open_catalog(sql_catalog_url)
    from matrixos.catalog.access import Principal

    bob = Principal("bob", frozenset())
    store = PolicyStore(mine, CatalogCache(mine))
    other = PolicyStore(theirs)
    try:
        assert store.applying(bob, ["main.s.t"], lambda _: "alice") == {}
        other.put(Policy("main.s.t", FILTER, "", "bob", "region = 'EU'"))
        found = store.applying(bob, ["main.s.t"], lambda _: "alice")
        assert found["main.s.t"].filters == ("region = 'EU'",)
        assert store.cache is not None
        hits = store.cache.hits
        assert store.applying(bob, ["main.s.t"], lambda _: "alice") == found
        assert store.cache.hits == hits + 1
        other.remove("main.s.t", FILTER, "", "bob")
        assert store.applying(bob, ["main.s.t"], lambda _: "alice") == {}
    finally:
        mine.close()
        theirs.close()


def test_the_counter_is_read_right_from_threads_a_forked_child_and_after_close(
    tmp_path: object,
) -> None:
    # On a SQLite file the counter is read on a connection of each thread's own.
    import multiprocessing
    import threading
    from pathlib import Path

    url = f"sqlite:///{Path(str(tmp_path)) / 'catalog.db'}"
    cat, other = open_catalog(url), open_catalog(url)
    try:
        n0 = cat.changes()
        other.create_schema("main", "s")  # another process's change
        seen: list[int | None] = []
        reader = threading.Thread(target=lambda: seen.append(cat.changes()))
        reader.start()
        reader.join()
        assert seen == [cat.changes()] and seen[0] != n0
        ctx = multiprocessing.get_context("fork")
        answers = ctx.SimpleQueue()
        child = ctx.Process(target=lambda: answers.put(cat.changes()))
        child.start()  # forked: it opens a connection of its own, not the parent's
        child.join(60)
        assert child.exitcode == 0 and answers.get() == seen[0]
        other.create_schema("main", "s2")
        assert cat.changes() not in (n0, seen[0])
    finally:
        cat.close()
        other.close()
    assert cat.changes() is not None  # a closed catalog still answers (through its engine)
