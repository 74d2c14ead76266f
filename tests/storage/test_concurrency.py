"""Many writers on one Delta table, locally and on S3 (moto): appends never conflict, DML that
loses a race is retried, a writer killed mid-write leaves the previous version intact.

Writers are separate processes started with ``spawn`` (delta-rs panics in forked children).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from typing import Any, Literal

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

import matrixos as mx
from matrixos.errors import (
    ConcurrentWriteError,
    MatrixOSError,
    NotSupported,
    SchemaMismatch,
    SQLError,
    TableExists,
    TableNotFound,
)
from matrixos.storage.delta import DeltaStore

SPAWN = mp.get_context("spawn")
OPS = 4  # writes per writer process


# Writers race for commit files (``_delta_log/N.json``); the shared test S3 server serializes
# PUTs so conditional commits are atomic, as on real S3 (see tests/_servers.py).


def data_files(lh: mx.Lakehouse, location: str) -> set[str]:
    fs = lh.warehouse.fs
    fs.invalidate_cache()
    path = location.split("://", 1)[1] if "://" in location else location
    if not fs.exists(path):
        return set()
    return {p for p in fs.find(path) if p.endswith(".parquet") and "/_delta_log/" not in p}


# ---------------------------------------------------------------------- writers in processes
def _writer(
    target: tuple[str, dict[str, str] | None],
    name: str,
    job: str,
    me: int,
    barrier: Any,
    out: Any,
    settings: dict[str, Any],
) -> None:
    """One writer process: run ``job`` against table ``name``, report versions and errors."""
    result: dict[str, Any] = {"me": me, "job": job, "versions": [], "error": None}
    try:
        with mx.connect(target[0], storage_options=target[1], **settings) as lh:
            t = lh.table(name)
            barrier.wait(timeout=60)
            for i in range(OPS):
                if job == "append":
                    ids = [me * 1000 + i * 10 + j for j in range(10)]
                    res = t.append(pa.table({"id": ids, "v": [0] * 10, "who": [me] * 10}))
                elif job == "update":
                    res = t.update({"v": "v + 1"}, where="id < 50")
                elif job == "merge":
                    res = t.merge(
                        pa.table({"id": [50 + i, 2000 + i], "v": [100, 100], "who": [me, me]}),
                        on=["id"],
                    )
                elif job == "delete":
                    res = t.delete(f"id = {90 + i}")
                else:
                    raise ValueError(job)
                result["versions"].append(res.version)
    except BaseException as e:
        result["error"] = f"{type(e).__name__}: {e}"
    out.put(result)


def run_writers(
    target: Any, name: str, jobs: list[str], settings: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    barrier = SPAWN.Barrier(len(jobs))
    out = SPAWN.Queue()
    procs = [
        SPAWN.Process(
            target=_writer,
            args=(
                (target.uri, target.storage_options),
                name,
                job,
                i,
                barrier,
                out,
                settings or {},
            ),
        )
        for i, job in enumerate(jobs)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=180) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    return sorted(results, key=lambda r: r["me"])


def check_versions(t: Any, results: list[dict[str, Any]], base: int) -> None:
    """Every write reported its own commit: distinct versions whose history entry is its op."""
    ops = {"append": "WRITE", "update": "UPDATE", "merge": "MERGE", "delete": "DELETE"}
    history = {h["version"]: h["operation"] for h in t.history()}
    reported = [v for r in results for v in r["versions"]]
    assert len(reported) == len(set(reported)), results
    for r in results:
        for v in r["versions"]:
            assert history[v] == ops[r["job"]], (r["job"], v, history)
    # no version went missing and none was written by anyone else
    assert sorted(reported) == list(range(base + 1, base + 1 + len(reported)))


def test_concurrent_blind_appends_never_conflict(lh: mx.Lakehouse, warehouse_root: Any) -> None:
    t = lh.create_table("s.log", pa.table({"id": [-1], "v": [0], "who": [-1]}))
    results = run_writers(warehouse_root, "s.log", ["append"] * 3)
    assert [r["error"] for r in results] == [None] * 3
    ids = t.to_arrow().column("id").to_pylist()
    want = [-1] + [me * 1000 + i * 10 + j for me in range(3) for i in range(OPS) for j in range(10)]
    assert sorted(ids) == sorted(want)  # all rows, none twice
    assert t.version == 3 * OPS
    check_versions(t, results, 0)
    assert lh.sql("SELECT who, count(*) FROM s.log GROUP BY who ORDER BY who").fetchall() == [
        (-1, 1),
        (0, 10 * OPS),
        (1, 10 * OPS),
        (2, 10 * OPS),
    ]


@pytest.mark.parametrize("fmt", ["delta", "lance"])
def test_appenders_crossing_the_autocompaction_line_together_duplicate_nothing(
    lh: mx.Lakehouse, warehouse_root: Any, fmt: Literal["delta", "lance"]
) -> None:
    """Issue 9's reproducer: writers that each append small batches all auto-compact at once
    (here every 3 small files); every row stays exactly once."""
    t = lh.create_table("s.auto", pa.table({"id": [-1], "v": [0], "who": [-1]}), format=fmt)
    results = run_writers(warehouse_root, "s.auto", ["append"] * 3, {"auto_compact_min_files": 3})
    assert [r["error"] for r in results] == [None] * 3
    ids = t.to_arrow().column("id").to_pylist()
    want = [-1] + [me * 1000 + i * 10 + j for me in range(3) for i in range(OPS) for j in range(10)]
    assert sorted(ids) == sorted(want)
    assert "OPTIMIZE" in [h["operation"] for h in t.history()]


def test_concurrent_dml_and_appends_all_succeed(lh: mx.Lakehouse, warehouse_root: Any) -> None:
    t = lh.create_table(
        "s.busy", pa.table({"id": list(range(100)), "v": [0] * 100, "who": [-1] * 100})
    )
    jobs = ["update", "merge", "delete", "append"]
    results = run_writers(warehouse_root, "s.busy", jobs)
    assert [r["error"] for r in results] == [None] * len(jobs), results
    assert t.version == len(jobs) * OPS, (results, t.history())
    check_versions(t, results, 0)
    got = {r["id"]: r for r in t.to_arrow().to_pylist()}
    # every update applied exactly once, whatever it raced with
    assert all(got[i]["v"] == OPS for i in range(50))
    # merges: OPS upserted rows, OPS inserted ones
    assert all(got[50 + i]["v"] == 100 and got[50 + i]["who"] == 1 for i in range(OPS))
    assert all(got[2000 + i]["v"] == 100 for i in range(OPS))
    assert all(got[i]["v"] == 0 and got[i]["who"] == -1 for i in range(50 + OPS, 90))
    # deletes
    assert not any(90 + i in got for i in range(OPS))
    assert all(i in got for i in range(90 + OPS, 100))
    # appends
    appended = [3000 + i * 10 + j for i in range(OPS) for j in range(10)]
    assert all(got[i]["who"] == 3 for i in appended)
    assert len(got) == 100 - OPS + OPS + 10 * OPS


# ------------------------------------------------------------------- retries, deterministically
def interfering(location: str, options: dict[str, str] | None, times: int) -> tuple[Any, list]:
    """A DML step that, the first ``times`` times it runs, lets another writer commit first.

    The step works on the snapshot ``run_with_retries`` handed it, as ``DeltaStore.update`` does
    (delta-rs's own commit retries off); the competing UPDATE goes through a second, independent
    DeltaTable, so delta-rs sees a real conflicting commit.
    """
    calls: list[int] = []

    def step(dt: DeltaTable) -> dict[str, Any]:
        calls.append(dt.version())
        if len(calls) <= times:
            DeltaTable(location, storage_options=options).update(
                updates={"other": "other + 1"}, predicate="id >= 0"
            )
        return dict(
            dt.update(
                updates={"v": "v + 1"},
                predicate="id = 1",
                commit_properties=CommitProperties(max_commit_retries=0),
            )
        )

    return step, calls


def test_conflicts_are_retried_on_a_fresh_snapshot(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.race", pa.table({"id": [1, 2], "v": [0, 0], "other": [0, 0]}))
    opts = lh.warehouse.delta_options(t.location)
    store = DeltaStore(t.location, opts, commit_retries=3)
    step, calls = interfering(t.location, opts, times=2)
    res = store.run_with_retries("update", step)
    assert len(calls) == 3
    assert calls == [0, 1, 2]  # each attempt saw the commit that beat the previous one
    assert res.version == 3
    rows = {r["id"]: r for r in t.to_arrow().to_pylist()}
    assert rows[1]["v"] == 1  # applied once
    assert rows[1]["other"] == 2 and rows[2]["other"] == 2  # the rivals' commits kept


def test_conflicts_beyond_the_budget_raise(warehouse_root: Any) -> None:
    with mx.connect(
        warehouse_root.uri, storage_options=warehouse_root.storage_options, commit_retries=0
    ) as lh:
        t = lh.create_table("s.lost", pa.table({"id": [1, 2], "v": [0, 0], "other": [0, 0]}))
        store = t.store  # carries the session's commit_retries=0
        assert store.commit_retries == 0
        opts = lh.warehouse.delta_options(t.location)
        step, calls = interfering(t.location, opts, times=1)
        with pytest.raises(ConcurrentWriteError) as err:
            store.run_with_retries("update", step)
        assert "nothing was written" in str(err.value)
        assert len(calls) == 1
        assert t.version == 1  # only the rival's commit
        rows = {r["id"]: r for r in t.to_arrow().to_pylist()}
        assert rows[1] == {"id": 1, "v": 0, "other": 1}


def test_run_with_retries_counts_and_translates(tmp_path: Any) -> None:
    write_deltalake(str(tmp_path / "t"), pa.table({"id": [1]}))
    store = DeltaStore(str(tmp_path / "t"), commit_retries=2)
    calls: list[int] = []

    def flaky(fails: int) -> Callable[[DeltaTable], dict[str, Any]]:
        def fn(dt: DeltaTable) -> dict[str, Any]:
            calls.append(1)
            if len(calls) <= fails:
                raise CommitFailedError("Failed to commit transaction: conflict")
            return {"num_updated_rows": 7}

        return fn

    res = store.run_with_retries("update", flaky(2))
    assert len(calls) == 3
    assert res.metrics == {"num_updated_rows": 7}
    assert res.version == 0

    calls.clear()
    with pytest.raises(ConcurrentWriteError, match="3 times"):
        store.run_with_retries("update", flaky(3))
    assert len(calls) == 3

    calls.clear()

    def broken(dt: DeltaTable) -> dict[str, Any]:
        calls.append(1)
        raise ValueError("not a conflict")

    with pytest.raises(MatrixOSError) as err:  # not retried, and no raw exception escapes
        store.run_with_retries("update", broken)
    assert len(calls) == 1
    assert isinstance(err.value, SQLError)
    assert "not a conflict" in str(err.value)


# ----------------------------------------------------------------------------- crash safety
def _big_append(uri: str, storage_options: dict[str, str] | None, name: str) -> None:
    import numpy as np

    n = 4_000_000
    rng = np.random.default_rng(0)
    data = pa.table(
        {
            "id": pa.array(np.arange(1_000, 1_000 + n)),
            "x": pa.array(rng.random(n)),
            "y": pa.array(rng.random(n)),
        }
    )
    with mx.connect(uri, storage_options=storage_options, target_file_bytes=512 * 1024) as lh:
        lh.table(name).append(data)
    os._exit(0)  # pragma: no cover - the parent kills us long before


def _kill_mid_write(child: Any, wrote: Callable[[], bool]) -> None:
    """Start ``child`` and SIGKILL it as soon as ``wrote()`` sees its first part file."""
    child.start()
    deadline = time.monotonic() + 120
    try:
        while not wrote():
            assert child.is_alive(), "the writer finished before any part file was seen"
            assert time.monotonic() < deadline, "no part file appeared"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL


def _big_create(uri: str, storage_options: dict[str, str] | None, name: str) -> None:
    import numpy as np

    n = 4_000_000
    data = pa.table(
        {"id": pa.array(np.arange(n)), "x": pa.array(np.random.default_rng(0).random(n))}
    )
    with mx.connect(uri, storage_options=storage_options, target_file_bytes=512 * 1024) as lh:
        lh.create_table(name, data)
    os._exit(0)  # pragma: no cover - the parent kills us long before


def test_creator_killed_before_first_commit_leaves_a_droppable_entry(
    lh: mx.Lakehouse, warehouse_root: Any
) -> None:
    def location() -> str:  # the dying creator's folder: the one named born-<tag>
        lh.warehouse.fs.invalidate_cache()
        found = lh.warehouse.fs.glob(lh.warehouse.join("main", "s", "born-*").split("://")[-1])
        return found[0] if found else lh.warehouse.join("main", "s", "born-none")

    child = SPAWN.Process(
        target=_big_create, args=(warehouse_root.uri, warehouse_root.storage_options, "s.born")
    )
    _kill_mid_write(child, lambda: bool(data_files(lh, location())))
    dead = location()
    with mx.connect(warehouse_root.uri, storage_options=warehouse_root.storage_options) as fresh:
        # The name stays taken (another process may still be creating it), and reading says
        # what happened and what to do; it never returns the dead creator's rows.
        assert "main.s.born" in fresh.tables("s")
        for read in (
            lambda: fresh.table("s.born").count(),
            lambda: fresh.sql("SELECT * FROM s.born"),
        ):
            with pytest.raises(TableNotFound, match="holds no committed data") as err:
                read()
            assert "DROP TABLE main.s.born" in (err.value.hint or "")
        with pytest.raises(TableExists):
            fresh.create_table("s.born", pa.table({"id": [1]}))
        fresh.sql("DROP TABLE s.born")
        t = fresh.create_table("s.born", pa.table({"id": [1, 2]}))
        assert t.version == 0
        assert fresh.sql("SELECT sum(id) FROM s.born").scalar() == 3
        assert not data_files(fresh, dead)  # the dead creator's files went with the entry
        assert not t.location.endswith(dead.rsplit("/", 1)[1])


def test_writer_killed_mid_append_leaves_previous_version(
    lh: mx.Lakehouse, warehouse_root: Any
) -> None:
    t = lh.create_table(
        "s.crash", pa.table({"id": [1, 2, 3], "x": [0.1, 0.2, 0.3], "y": [0.0] * 3})
    )
    t.append(pa.table({"id": [4], "x": [0.4], "y": [0.0]}))
    before = data_files(lh, t.location)
    child = SPAWN.Process(
        target=_big_append,
        args=(warehouse_root.uri, warehouse_root.storage_options, "s.crash"),
    )
    _kill_mid_write(child, lambda: bool(data_files(lh, t.location) - before))
    orphans = data_files(lh, t.location) - before
    assert orphans  # it really was killed mid-write

    # the previous version, exactly
    with mx.connect(warehouse_root.uri, storage_options=warehouse_root.storage_options) as fresh:
        t2 = fresh.table("s.crash")
        assert t2.version == 1
        assert sorted(t2.to_arrow().column("id").to_pylist()) == [1, 2, 3, 4]
        assert fresh.sql("SELECT count(*) FROM s.crash").scalar() == 4
        assert (
            DeltaTable(
                t2.location, storage_options=fresh.warehouse.delta_options(t2.location)
            ).version()
            == 1
        )
        # later writes work, and the dead writer's files never become visible
        assert t2.append(pa.table({"id": [5], "x": [0.5], "y": [0.0]})).version == 2
        assert sorted(t2.to_arrow().column("id").to_pylist()) == [1, 2, 3, 4, 5]
        t2.merge(pa.table({"id": [5, 6], "x": [5.5, 0.6], "y": [0.0, 0.0]}), on=["id"])
        assert fresh.sql("SELECT count(*), max(x) FROM s.crash").fetchall() == [(6, 5.5)]
        # and vacuum can clear what the crash left behind
        removed = t2.vacuum(0, enforce=False)
        assert len(removed) >= len(orphans)
        assert not (data_files(fresh, t2.location) & orphans)
        assert sorted(t2.to_arrow().column("id").to_pylist()) == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------- compaction races (issue 9)
def small_files_table(location: str, options: dict[str, str] | None, n: int = 12) -> None:
    """A Delta table of ``n`` one-file appends of 10 rows (ids 0 .. 10n-1)."""
    for i in range(n):
        write_deltalake(
            location,
            pa.table({"id": list(range(i * 10, i * 10 + 10)), "v": [0] * 10}),
            mode="append",
            storage_options=options,
        )


def ids_of(location: str, options: dict[str, str] | None) -> list[int]:
    return sorted(
        DeltaTable(location, storage_options=options).to_pyarrow_table()["id"].to_pylist()
    )


def test_upstream_delta_rs_rebases_a_compaction_over_a_compaction(tmp_path: Any) -> None:
    """Pins delta-rs's behaviour (1.6.6) that made MatrixOS duplicate rows (issue 9).

    Two ``optimize.compact()`` calls that read the same version both commit: delta-rs rebases
    the loser and its conflict checker ignores the winner's ``dataChange=false`` removes, so the
    loser removes the same files again and re-adds their rows. A full overwrite rebased over a
    compaction keeps the compacted file. Loading both tables at one version before either
    commits is the same interleaving two processes hit by chance, made deterministic.

    If this fails after an upgrade, delta-rs changed its conflict checker: re-check whether
    ``storage/_delta_compaction.py`` and the overwrite's ``max_commit_retries=0`` are still
    needed (they stay correct either way).
    """
    loc = str(tmp_path / "t")
    small_files_table(loc, None, 40)
    first, second = DeltaTable(loc), DeltaTable(loc)
    assert first.optimize.compact()["numFilesRemoved"] == 40
    assert second.optimize.compact()["numFilesRemoved"] == 40  # no conflict raised
    got = ids_of(loc, None)
    assert len(got) == 800 and len(set(got)) == 400  # every row twice

    # z_order (and compact) ignore max_commit_retries=0: they still rebase
    loc3 = str(tmp_path / "t3")
    small_files_table(loc3, None, 4)
    first, second = DeltaTable(loc3), DeltaTable(loc3)
    first.optimize.compact()
    second.optimize.z_order(["id"], commit_properties=CommitProperties(max_commit_retries=0))
    assert len(ids_of(loc3, None)) == 80

    loc2 = str(tmp_path / "t2")
    small_files_table(loc2, None, 4)
    compactor, writer = DeltaTable(loc2), DeltaTable(loc2)
    compactor.optimize.compact()
    write_deltalake(writer, pa.table({"id": [-1], "v": [1]}), mode="overwrite")
    assert len(ids_of(loc2, None)) == 41  # the overwrite did not replace the compacted rows


def orphans(location: str, options: dict[str, str] | None) -> set[str]:
    """Parquet files on storage that no version of the table ever referenced."""
    from matrixos.storage.options import StorageOptions
    from matrixos.storage.warehouse import filesystem_for

    dt = DeltaTable(location, storage_options=options)
    known: set[str] = set()
    for v in range(dt.version() + 1):
        dt.load_as_version(v)
        known |= {u.rsplit("/", 1)[1] for u in dt.file_uris()}
    fs = filesystem_for(location, StorageOptions.from_mapping(options))
    fs.invalidate_cache()
    root = location.split("://", 1)[-1]
    return {p.rsplit("/", 1)[1] for p in fs.find(root) if p.endswith(".parquet")} - known


class _StaleOnce(DeltaStore):
    """A store whose next ``open()`` returns a snapshot, then lets ``rival`` commit: the
    interleaving where another writer commits between our read and our commit."""

    rival: Callable[[], object] | None = None

    def open(self, version: int | None = None, timestamp: Any = None) -> DeltaTable:
        dt = super().open(version, timestamp)
        rival, self.rival = self.rival, None
        if rival is not None:
            rival()
        return dt


@pytest.fixture
def small(warehouse_root: Any, tmp_path: Any) -> tuple[str, dict[str, str] | None]:
    if warehouse_root.kind == "local":
        loc = str(tmp_path / "small")
    else:
        loc = warehouse_root.uri + "/small"
    small_files_table(loc, warehouse_root.storage_options)
    return loc, warehouse_root.storage_options


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [("compact", "compact"), ("zorder", "compact"), ("compact", "zorder"), ("zorder", "zorder")],
)
def test_two_compactions_of_one_snapshot_commit_once(small: Any, mine: str, theirs: str) -> None:
    loc, opts = small
    a = _StaleOnce(loc, opts)
    b = DeltaStore(loc, opts)
    zorder = {"compact": None, "zorder": ["v", "id"]}
    # b compacts after a read its snapshot, before a commits
    a.rival = lambda: b.optimize(zorder[theirs])
    with pytest.raises(ConcurrentWriteError, match="conflicted"):
        a.optimize(zorder[mine], retries=0)
    assert not orphans(loc, opts)  # the loser deleted the file it wrote
    got = ids_of(loc, opts)
    assert got == list(range(120))  # once each
    h = DeltaTable(loc, storage_options=opts).history()
    assert [x["operation"] for x in h[:2]] == ["OPTIMIZE", "WRITE"]  # one compaction only
    # with a retry, the loser re-reads the table and compacts what is left (nothing, or for
    # Z-order the one file again)
    a.rival = b.optimize
    assert a.optimize(zorder[mine], retries=1)["numFilesRemoved"] == (mine == "zorder")
    assert ids_of(loc, opts) == list(range(120))


def test_a_compaction_commits_after_blind_appends(small: Any) -> None:
    loc, opts = small
    a = _StaleOnce(loc, opts)
    appender = DeltaStore(loc, opts)
    extra = [pa.table({"id": [1000 + i], "v": [1]}) for i in range(3)]
    a.rival = lambda: [appender.append(x) for x in extra]
    out = a.optimize(retries=0)  # no retry allowed: the appends must not conflict
    assert out["numFilesRemoved"] == 12 and out["numFilesAdded"] == 1
    assert out["version"] == out["readVersion"] + 4  # committed after the three appends
    assert ids_of(loc, opts) == [*range(120), 1000, 1001, 1002]
    assert len(DeltaTable(loc, storage_options=opts).file_uris()) == 4


@pytest.mark.parametrize("rival", ["delete", "update", "merge", "overwrite"])
def test_a_compaction_yields_to_dml_on_its_files(small: Any, rival: str) -> None:
    loc, opts = small
    a = _StaleOnce(loc, opts)
    other = DeltaStore(loc, opts)
    runs = {
        "delete": lambda: other.delete("id = 5"),
        "update": lambda: other.update({"v": "v + 1"}, where="id = 5"),
        "merge": lambda: other.merge(pa.table({"id": [5], "v": [7]}), on=["id"]),
        "overwrite": lambda: other.overwrite(pa.table({"id": [5], "v": [9]})),
    }
    a.rival = runs[rival]
    with pytest.raises(ConcurrentWriteError):
        a.optimize(retries=0)
    table = DeltaTable(loc, storage_options=opts).to_pyarrow_table().to_pylist()
    got = {r["id"]: r["v"] for r in table}
    assert len(got) == len(table)  # no id twice
    want = {
        "delete": {i: 0 for i in range(120) if i != 5},
        "update": {**{i: 0 for i in range(120)}, 5: 1},
        "merge": {**{i: 0 for i in range(120)}, 5: 7},
        "overwrite": {5: 9},
    }[rival]
    assert got == want
    assert not orphans(loc, opts)  # the dropped compaction deleted the file it wrote


@pytest.mark.parametrize("op", ["overwrite", "delete", "update", "merge"])
def test_writes_on_a_snapshot_a_compaction_replaced(small: Any, op: str) -> None:
    """The other order: a compaction commits between a write's read and its commit."""
    loc, opts = small
    w = _StaleOnce(loc, opts, commit_retries=3)
    w.rival = DeltaStore(loc, opts).optimize
    if op == "overwrite":
        w.overwrite(pa.table({"id": [-1], "v": [1]}))
        want = {-1: 1}
    elif op == "delete":
        w.delete("id < 100")
        want = {i: 0 for i in range(100, 120)}
    elif op == "update":
        w.update({"v": "v + 1"})
        want = {i: 1 for i in range(120)}
    else:
        w.merge(pa.table({"id": [3, 500], "v": [8, 8]}), on=["id"])
        want = {**{i: 0 for i in range(120)}, 3: 8, 500: 8}
    table = DeltaTable(loc, storage_options=opts).to_pyarrow_table().to_pylist()
    assert len(table) == len(want)
    assert {r["id"]: r["v"] for r in table} == want
    assert "OPTIMIZE" in [h["operation"] for h in DeltaTable(loc, storage_options=opts).history()]


def test_lance_two_compactions_of_one_version_commit_once(
    warehouse_root: Any, tmp_path: Any
) -> None:
    """Lance's own conflict check (pinned): of two compactions planned on one version, the
    second commit fails with a retryable conflict instead of re-adding the rows."""
    import lance
    from lance.optimize import Compaction

    from matrixos.storage.lance import LanceStore

    loc = (str(tmp_path) if warehouse_root.kind == "local" else warehouse_root.uri) + "/frag"
    opts = {k.lower(): v for k, v in (warehouse_root.storage_options or {}).items()} or None
    store = LanceStore(loc, opts)
    store.create(pa.table({"id": list(range(10))}))
    for i in range(1, 8):
        store.append(pa.table({"id": list(range(i * 10, i * 10 + 10))}))
    first = lance.dataset(loc, storage_options=opts)
    second = lance.dataset(loc, storage_options=opts)
    plans = [Compaction.plan(ds, {}) for ds in (first, second)]
    done = [
        [task.execute(ds) for task in p.tasks] for ds, p in zip((first, second), plans, strict=True)
    ]
    assert Compaction.commit(first, done[0]).fragments_removed == 8
    with pytest.raises(OSError, match=r"(?i)conflict"):
        Compaction.commit(second, done[1])
    ids = sorted(store.open().to_table(columns=["id"])["id"].to_pylist())
    assert ids == list(range(80))
    # through the store: a compaction that finds nothing left reports so, rows unchanged
    assert store.optimize()["fragments_removed"] == 0
    assert sorted(store.open().to_table(columns=["id"])["id"].to_pylist()) == list(range(80))


def test_zorder_orders_rows_and_keeps_them(tmp_path: Any) -> None:
    loc = str(tmp_path / "z")
    for i in range(4):
        write_deltalake(
            loc,
            pa.table({"x": [(i * 37 + j * 11) % 64 for j in range(64)], "y": list(range(64))}),
            mode="append",
        )
    store = DeltaStore(loc, target_file_bytes=1 << 30)
    before = sorted(DeltaTable(loc).to_pyarrow_table().to_pylist(), key=lambda r: (r["x"], r["y"]))
    out = store.optimize(["x", "y"])
    assert (out["numFilesRemoved"], out["numFilesAdded"]) == (4, 1)
    after = DeltaTable(loc).to_pyarrow_table().to_pylist()
    assert sorted(after, key=lambda r: (r["x"], r["y"])) == before
    # Morton order: the first quarter of rows holds the small-x, small-y quadrant only
    quarter = after[: len(after) // 4]
    assert max(r["x"] for r in quarter) < 32 and max(r["y"] for r in quarter) < 32
    h = DeltaTable(loc).history(1)[0]
    assert h["operation"] == "OPTIMIZE" and "zOrderBy" in h["operationParameters"]
    with pytest.raises(SchemaMismatch, match="ZORDER"):
        store.optimize(["nope"])


def test_compaction_refuses_tables_it_cannot_rewrite_safely(tmp_path: Any) -> None:
    loc = str(tmp_path / "cm")
    DeltaTable.create(
        loc,
        pa.schema([("id", pa.int64())]),
        configuration={"delta.columnMapping.mode": "name"},
    )
    for i in range(3):
        write_deltalake(loc, pa.table({"id": [i]}), mode="append")
    store = DeltaStore(loc, auto_compact_min_files=2)
    with pytest.raises(NotSupported, match="column mapping"):
        store.optimize()
    assert store.maybe_autocompact() is None  # auto-compaction leaves such tables alone
    assert DeltaTable(loc).history(1)[0]["operation"] == "WRITE"


def test_compacted_files_carry_statistics_that_prune_correctly(lh: mx.Lakehouse) -> None:
    """Statistics our compaction writes: queries that prune on them return the same rows."""
    import datetime as dt_

    base = dt_.datetime(2024, 1, 1, tzinfo=dt_.UTC)
    t = None
    for i in range(6):
        data = pa.table(
            {
                "id": [i * 10 + j for j in range(10)],
                "x": [float(i) + j / 10 for j in range(10)],
                "s": [f"{'z' * 70 if j == 0 else ''}k{i}-{j}" for j in range(10)],
                "ts": [base + dt_.timedelta(days=i, microseconds=j * 999) for j in range(10)],
                "d": [dt_.date(2024, 1, 1 + i)] * 10,
                "p": ["a" if i % 2 else "b c"] * 10,
            }
        )
        if t is None:
            t = lh.create_table("s.stats", data, partition_by=["p"])
        else:
            t.append(data)
    assert t is not None
    queries = [
        "id BETWEEN 33 AND 41",
        "x > 4.85",
        "s = 'k3-4'",
        "s >= 'zzzz'",
        "ts > TIMESTAMPTZ '2024-01-04 00:00:00.008+00'",
        "d = DATE '2024-01-03'",
        "p = 'b c' AND id < 25",
    ]
    q = "SELECT id FROM s.stats WHERE {} ORDER BY id"
    before = {w: lh.sql(q.format(w)).fetchall() for w in queries}
    assert all(before.values())
    assert t.optimize()["numFilesRemoved"] == 6
    assert active_files(t) == 2
    for w in queries:
        assert lh.sql(q.format(w)).fetchall() == before[w], w


def active_files(t: Any) -> int:
    return len(DeltaTable(t.location, storage_options=t.store.storage_options).file_uris())


class _CountingStore(DeltaStore):
    """Counts write attempts (each takes the latest snapshot to write on); right after the
    first attempt took its snapshot, ``rival`` commits before the attempt does."""

    attempts = 0
    rival: Callable[[], object] | None = None

    def _writable(self) -> DeltaTable:
        dt = super()._writable()
        self.attempts += 1
        if self.attempts == 1 and self.rival is not None:
            self.rival()
        return dt


@pytest.mark.parametrize(("appended", "attempts"), [(9_000_000, 1), (150, 2)])
def test_merge_rebases_over_appends_outside_its_keys(
    small: Any, appended: int, attempts: int
) -> None:
    """A MERGE names the key range it reads, so delta-rs lets it past a concurrent append of
    other keys (one attempt); an append inside the range sends it round again."""
    loc, opts = small
    m = _CountingStore(loc, opts, commit_retries=3)
    appender = DeltaStore(loc, opts)
    m.rival = lambda: appender.append(pa.table({"id": [appended], "v": [1]}))
    m.merge(pa.table({"id": [15, 5001], "v": [7, 7]}), on=["id"])
    assert m.attempts == attempts
    rows = DeltaTable(loc, storage_options=opts).to_pyarrow_table().to_pylist()
    got = {r["id"]: r["v"] for r in rows}
    assert len(rows) == len(got) == 122
    assert got[15] == got[5001] == 7 and got[appended] == 1


def test_merge_key_ranges_keep_string_keys_exact(tmp_path: Any) -> None:
    loc = str(tmp_path / "sk")
    write_deltalake(loc, pa.table({"k": ["a'b", "c\\\\d", "e"], "v": [0, 0, 0]}))
    store = DeltaStore(loc)
    store.merge(pa.table({"k": ["a'b", "c\\\\d", "z'"], "v": [1, 1, 1]}), on=["k"])
    got = {r["k"]: r["v"] for r in DeltaTable(loc).to_pyarrow_table().to_pylist()}
    assert got == {"a'b": 1, "c\\\\d": 1, "e": 0, "z'": 1}


def test_commit_check_tells_ours_compatible_and_conflicting_commits(tmp_path: Any) -> None:
    """What a compaction concludes from the commit that took the version it wanted: its own
    (an S3 PUT retried after a lost response finds its first try), harmless, or a conflict."""
    from matrixos.storage._delta_compaction import (
        CompactionConflict,
        LogStore,
        _ours_or_compatible,
    )

    loc = str(tmp_path / "t")
    small_files_table(loc, None, 3)  # versions 0..2
    store = LogStore(loc, None)
    log = tmp_path / "t" / "_delta_log"
    inputs = set(pa.table(DeltaTable(loc).get_add_actions()).column("path").to_pylist())
    mine = '{"commitInfo":{"operation":"OPTIMIZE","txnId":"t1"}}\n{"remove":{"path":"x"}}\n'
    (log / f"{3:020d}.json").write_text(mine)
    assert _ours_or_compatible(store, 3, inputs, "t1") is True
    assert _ours_or_compatible(store, 2, inputs, "t1") is False  # a blind append
    gone = next(iter(inputs))
    (log / f"{4:020d}.json").write_text(f'{{"remove":{{"path":"{gone}"}}}}\n')
    with pytest.raises(CompactionConflict, match="already removed"):
        _ours_or_compatible(store, 4, inputs, "t1")
    (log / f"{5:020d}.json").write_text('{"metaData":{}}\n')
    with pytest.raises(CompactionConflict, match="schema"):
        _ours_or_compatible(store, 5, inputs, "t1")


def test_lance_commit_retries_running_out_is_a_conflict_not_a_timeout() -> None:
    """Lance's words when its commit retries run out under churn (seen in the torture run on
    S3) mention a timeout; the caller must get a ConcurrentWriteError, not 'endpoint slow'."""
    from matrixos.storage.lance import _translate

    raw = OSError(
        "Too many concurrent writers. Attempted 6 times, but failed on retry_timeout of "
        "30.000 seconds., /home/runner/work/lance/lance/rust/lance/src/io/commit.rs:130:5"
    )
    err = _translate(raw, "update of s3://b/wh/t failed")
    assert isinstance(err, ConcurrentWriteError)
    assert "commit.rs" not in str(err)
