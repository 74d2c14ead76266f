"""Two processes MERGE the same new keys into one Lance table at once, with and without a kill
while one holds the table's merge lease: no version of the table, not only the last, ever
holds a key twice, and every merge a writer was told succeeded is in the table (a ledger).

The writers are real processes steered by the test hook of ``storage/_lance_merge.py``, one
hook folder each: a writer leaves ``at-<point>`` at ``acquire`` (about to take the lease),
``waiting`` (another writer holds it), ``planned`` (read, not committed) and ``committed``, and
waits there for ``go-<point>`` when its folder holds ``pause-<point>``; with
``exit-after-commit`` it exits (``os._exit``, as a kill -9) right after its commit, still
holding the lease. Also pins the upstream behaviour the design relies on
(lance-format/lance#4585, #8949), so that an upgrade that changes it is noticed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from matrixos.errors import ConcurrentWriteError, SchemaMismatch
from matrixos.storage import _lance_merge, _lease
from matrixos.storage._lance_merge import (
    FENCING,
    HOOK_ENV,
    PK,
    RECORDED,
    TAG_PREFIX,
    primary_key,
    tag_merge,
)
from matrixos.storage._lease import TTL_ENV, WAIT_ENV, ObjectLease, merge_lease
from matrixos.storage.lance import LanceStore
from matrixos.storage.options import StorageOptions

WORKER = """
import json, sys
import pyarrow as pa
from matrixos.storage.lance import LanceStore

loc, options, spec = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
store = LanceStore(loc, options or None)
keys = pa.array(spec["keys"], type=pa.type_for_alias(spec["type"]))
data = pa.table({"id": keys, "v": [spec["value"]] * len(keys)})
meta = {"writer": spec["value"]} if spec["meta"] else None
res = store.merge(data, on=["id"], commit_metadata=meta)
with open(spec["ledger"], "a") as f:  # acknowledged: merge() returned
    f.write(json.dumps({"value": spec["value"], "version": res.version}) + "\\n")
"""

KEYS: dict[str, list[Any]] = {
    "int64": [11, 12, 13],
    "string": ["k11", "k12", "k13"],
    "double": [1.5, 2.5, 3.5],
}
SEED: dict[str, list[Any]] = {"int64": [0], "string": ["k0"], "double": [0.5]}


@dataclass
class Writer:
    proc: subprocess.Popen[str]
    hook: Path

    def at(self, point: str, *, or_exit: bool = False) -> None:
        """Wait until the writer has reached ``point`` (or exited, with ``or_exit``)."""
        deadline = time.monotonic() + 120
        while not (self.hook / f"at-{point}").exists():
            if self.proc.poll() is not None and or_exit:
                return
            if self.proc.poll() is not None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the writer exited ({self.proc.returncode}): {err}")
            assert time.monotonic() < deadline, f"the writer never reached {point}"
            time.sleep(0.01)

    def go(self, point: str) -> None:
        (self.hook / f"go-{point}").touch()

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=120)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def reached(self, point: str) -> bool:
        return (self.hook / f"at-{point}").exists()


class Race:
    """A table, its writers and the ledger of their acknowledged merges."""

    def __init__(
        self,
        tmp_path: Path,
        key_type: str,
        *,
        options: dict[str, str] | None = None,
        location: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmp_path, self.key_type = tmp_path, key_type
        self.location = location or str(tmp_path / "t")
        self.options = options
        self.store = LanceStore(self.location, options)
        self.ledger = tmp_path / "ledger.jsonl"
        self.env = env or {}
        self.writers: list[Writer] = []

    def create(self, *, null_key: bool = False) -> None:
        seed = pa.array(SEED[self.key_type] + ([None] if null_key else []), self.arrow_type)
        self.store.create(pa.table({"id": seed, "v": ["seed"] * len(seed)}))

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.type_for_alias(self.key_type)

    def seed_merge(self, *, meta: bool) -> None:
        """A merge of the seed key: declares the key (without ``meta``) or makes the table one
        with recorded merges (with ``meta``: RECORDED set, the fence committed)."""
        seed = pa.table({"id": pa.array(SEED[self.key_type], self.arrow_type), "v": ["seed"]})
        self.store.merge(seed, on=["id"], commit_metadata={"seed": "1"} if meta else None)

    def start(self, value: str, *, meta: bool, pause: tuple[str, ...] = (), crash: bool = False):
        hook = self.tmp_path / f"hook-{value}"
        hook.mkdir()
        for point in pause:
            (hook / f"pause-{point}").touch()
        if crash:
            (hook / "exit-after-commit").touch()
        spec = {
            "keys": KEYS[self.key_type],
            "type": self.key_type,
            "value": value,
            "meta": meta,
            "ledger": str(self.ledger),
        }
        args = [sys.executable, "-c", WORKER, self.location, json.dumps(self.options or {})]
        env = {**os.environ, **self.env, HOOK_ENV: str(hook)}
        proc = subprocess.Popen(
            [*args, json.dumps(spec)], env=env, stderr=subprocess.PIPE, text=True
        )
        writer = Writer(proc, hook)
        self.writers.append(writer)
        return writer

    def stop(self) -> None:
        for w in self.writers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()

    def one_after_the_other(self, meta: tuple[bool, bool], *, crash: bool = False) -> None:
        """w0 takes the lease and pauses after reading; w1 starts and waits for the lease; w0
        commits (and exits as if killed -9, holding the lease, with ``crash``); then check."""
        a = self.start("w0", meta=meta[0], pause=("planned",), crash=crash)
        a.at("planned")
        b = self.start("w1", meta=meta[1])
        b.at("waiting", or_exit=True)  # or exited: the check below then fails
        a.go("planned")
        assert [a.wait(), b.wait()] == [9 if crash else 0, 0]
        self.check()
        assert b.reached("waiting")
        assert _repairs(self.store) == []

    def acked(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines()]

    def check(self, *, tags_left: int = 0) -> dict[Any, str]:
        """No version holds a key twice; the newest holds every key, with the values of the
        last acknowledged merge; ``tags_left`` repair tags remain (merges that never
        committed). The key → value map of the newest version."""
        ds = self.store.open()
        for v in ds.versions():
            rows = ds.checkout_version(int(v["version"])).to_table(columns=["id"])
            counts = Counter(rows.column("id").to_pylist())
            assert {k: n for k, n in counts.items() if n > 1} == {}, f"version {v['version']}"
        rows = ds.to_table().to_pylist()
        values = {r["id"]: r["v"] for r in rows}
        assert set(values) >= set(KEYS[self.key_type]) | set(SEED[self.key_type])
        acked = self.acked()
        if acked:  # the last acknowledged merge's values, as if the merges ran one by one
            last = max(acked, key=lambda a: a["version"])["value"]
            assert {values[k] for k in KEYS[self.key_type]} == {last}
        else:  # none acknowledged: one writer's values, never a mix
            assert len({values[k] for k in KEYS[self.key_type]}) == 1
        tags = [t for t in ds.tags.list() if t.startswith(TAG_PREFIX)]
        assert len(tags) == tags_left, tags
        return values


@pytest.fixture
def race(tmp_path: Path) -> Any:
    made: list[Race] = []

    def make(key_type: str, **kwargs: Any) -> Race:
        made.append(Race(tmp_path, key_type, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.stop()


def _repairs(store: LanceStore) -> list[dict[str, Any]]:
    return [h for h in store.history() if h["operation"] == "DELETE"]


# ----------------------------------------------------------- declared keys: Lance checks them
@pytest.mark.parametrize("key_type", ["int64", "string"])
def test_two_merges_on_a_declared_key_plan_on_one_version_and_insert_each_key_once(
    race: Any, key_type: str
) -> None:
    """No lease here: both plan on one version; Lance refuses the later commit, which runs
    again as an update."""
    r = race(key_type)
    r.create()
    a = r.start("w0", meta=False, pause=("planned",))
    b = r.start("w1", meta=False, pause=("planned",))
    a.at("planned")
    b.at("planned")
    a.go("planned")
    b.go("planned")
    assert [a.wait(), b.wait()] == [0, 0]
    assert sorted(x["value"] for x in r.acked()) == ["w0", "w1"]
    r.check()
    assert primary_key(r.store.schema()) == ["id"]
    assert RECORDED not in r.store.open().config()
    assert not (Path(r.location) / "_matrixos").exists()  # no lease taken
    assert _repairs(r.store) == []


# ------------------------------------------------- recorded merges: serialized by the lease
RECORDED_CASES = {
    "float-key": ("double", False, False),
    "null-key": ("int64", False, True),
    "commit-metadata": ("int64", True, False),
}


@pytest.mark.parametrize("case", list(RECORDED_CASES))
def test_recorded_merges_of_the_same_new_keys_run_one_after_the_other(race: Any, case: str) -> None:
    """The second merge waits for the lease while the first holds it between its read and
    its commit, then reads the first one's rows and updates them: no version with a key
    twice, no repair."""
    key_type, meta, null_key = RECORDED_CASES[case]
    r = race(key_type)
    r.create(null_key=null_key)
    r.one_after_the_other((meta, meta))
    acked = {x["value"]: x["version"] for x in r.acked()}
    assert acked["w1"] > acked["w0"]
    assert r.store.open().config()[RECORDED] == "true"
    assert primary_key(r.store.schema()) == []  # declaring failed (NULL, float) or was skipped


@pytest.mark.parametrize("holder", ["recorded", "declared"])
def test_declared_and_recorded_merges_share_the_lease_on_a_table_with_recorded_merges(
    race: Any, holder: str
) -> None:
    """Lance does not check a recorded (unfiltered) commit against a declared one committed
    meanwhile (pinned below): where recorded merges happen, declared merges inserting keys
    take the lease too."""
    r = race("int64")
    r.create()
    r.seed_merge(meta=False)  # declares the key
    r.seed_merge(meta=True)  # a recorded merge: RECORDED, the fence
    r.one_after_the_other((holder == "recorded", holder != "recorded"))


def test_a_declared_merge_in_flight_when_recorded_merges_start_reruns_under_the_lease(
    race: Any,
) -> None:
    """A declared merge planned before the table's first recorded merge takes no lease. The
    recorded merge commits a fence before it reads; the declared commit then conflicts and
    its merge starts over, sees RECORDED and waits for the lease. (Without the fence, or with
    Lance retrying the merge itself, the declared commit lands between the recorded merge's
    read and its commit, and that commit adds the keys a second time.)"""
    r = race("int64")
    r.create()
    r.seed_merge(meta=False)
    d = r.start("w0", meta=False, pause=("planned",))
    d.at("planned")  # read before RECORDED: no lease
    rec = r.start("w1", meta=True, pause=("planned",))
    rec.at("planned")  # RECORDED set, fence committed, table read under the lease
    d.go("planned")
    d.at("waiting", or_exit=True)  # its commit conflicted with the fence: it waits
    rec.go("planned")
    assert [d.wait(), rec.wait()] == [0, 0]
    r.check()
    assert d.reached("waiting")
    acked = {x["value"]: x["version"] for x in r.acked()}
    assert acked["w0"] > acked["w1"]
    assert _repairs(r.store) == []
    ops = [h["operation"] for h in reversed(r.store.history())]
    assert ops.count("MERGE FENCE") == 1


# --------------------------------------------------------------- kill -9 holding the lease
def test_a_writer_killed_holding_the_lease_frees_it_at_once(race: Any) -> None:
    r = race("double")
    r.create()
    a = r.start("w0", meta=False, pause=("planned",))
    a.at("planned")
    a.proc.send_signal(signal.SIGKILL)
    assert a.wait() == -signal.SIGKILL
    b = r.start("w1", meta=False)
    assert b.wait() == 0
    assert not b.reached("waiting")  # the kernel released the lock with its holder
    r.check()


@pytest.mark.parametrize("case", list(RECORDED_CASES))
def test_a_writer_killed_right_after_its_commit_leaves_no_duplicate(race: Any, case: str) -> None:
    """The first writer exits (as kill -9) right after its commit, before giving the lease
    back; the second, waiting, then takes it and updates the keys."""
    key_type, meta, null_key = RECORDED_CASES[case]
    r = race(key_type)
    r.create(null_key=null_key)
    r.one_after_the_other((meta, meta), crash=True)


# ----------------------------------------------------------------------------- on S3 (moto)
def _on_s3(race: Any, s3_server: Any, key_type: str, *, ttl: str) -> Race:
    """A new table on moto's S3, its writers with a lease TTL of ``ttl`` seconds."""
    location = f"s3://{s3_server.make_bucket()}/t"
    r: Race = race(key_type, options=dict(s3_server.storage_options), location=location)
    r.env = {TTL_ENV: ttl}
    r.create()
    return r


def test_on_s3_a_killed_holder_s_lease_expires_and_the_next_merge_proceeds(
    race: Any, s3_server: Any
) -> None:
    """Killed holding the lease before its commit: the next merge waits out the TTL. The dead
    merge's tag (it never committed) stays until it is stale."""
    r = _on_s3(race, s3_server, "double", ttl="2")
    a = r.start("w0", meta=False, pause=("planned",))
    a.at("planned")
    b = r.start("w1", meta=False)
    b.at("waiting", or_exit=True)  # or exited: then the check below fails
    a.proc.send_signal(signal.SIGKILL)
    a.wait()
    assert b.wait() == 0
    assert b.proc.stderr and "taking over the expired merge lease" in b.proc.stderr.read()
    r.check(tags_left=1)


@pytest.mark.parametrize("key_type", ["double", "int64"])
def test_on_s3_a_writer_killed_right_after_its_commit_leaves_no_duplicate(
    race: Any, s3_server: Any, key_type: str
) -> None:
    """``int64`` with commit metadata (recorded); the next merge settles the dead one's tag."""
    r = _on_s3(race, s3_server, key_type, ttl="2")
    meta = key_type == "int64"
    r.one_after_the_other((meta, meta), crash=True)


def test_on_s3_a_holder_stalled_past_the_ttl_commits_nothing_and_starts_over(
    race: Any, s3_server: Any
) -> None:
    """SIGSTOP a holder between its read and its commit: the next merge takes the lease over
    after the TTL and commits the keys. The stalled one, continued, finds right before its
    commit that its lease went unrenewed for two thirds of the TTL: it commits nothing from
    its stale read, takes the lease again, reads the other's commit and updates the keys. No
    version holds a key twice and nothing needs a repair. (A stall between that check and
    the commit itself is the window left: Lance's commit cannot be made conditional on the
    lease; the recorded repair covers it.)"""
    r = _on_s3(race, s3_server, "double", ttl="1.5")
    a = r.start("w0", meta=False, pause=("planned",))
    a.at("planned")
    a.proc.send_signal(signal.SIGSTOP)
    b = r.start("w1", meta=False)
    try:
        assert b.wait() == 0
    finally:
        a.proc.send_signal(signal.SIGCONT)
    a.go("planned")
    assert a.wait() == 0
    assert a.proc.stderr and "lost its lease before committing" in a.proc.stderr.read()
    values = r.check()
    assert {values[k] for k in KEYS["double"]} == {"w0"}  # the later commit's rows
    assert _repairs(r.store) == []


# ------------------------------------------------------------------------- the lease itself
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_lance_ignores_the_lease_files_and_waiting_is_bounded(
    tmp_path: Path, s3_server: Any, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a lease is held: open, versions, compaction and cleanup_old_versions neither
    choke on nor delete the lease; another taker gives up with ConcurrentWriteError."""
    if backend == "s3":
        location = f"s3://{s3_server.make_bucket()}/t"
        options: dict[str, str] | None = dict(s3_server.storage_options)
        fs = StorageOptions.from_mapping(options).s3fs()
        lease_files = f"{location[5:]}/_matrixos"
    else:
        location, options, fs = str(tmp_path / "t"), None, None
        lease_files = f"{location}/_matrixos"
    store = LanceStore(location, options)
    store.create({"id": [1.5], "v": ["a"]})
    for i in range(4):
        store.append({"id": [2.5 + i], "v": ["b"]})
    monkeypatch.setenv(WAIT_ENV, "0.3")

    def listing() -> list[str]:
        if fs is None:
            return sorted(str(p.relative_to(lease_files)) for p in Path(lease_files).rglob("*"))
        return sorted(p[len(lease_files) :] for p in fs.find(lease_files))

    with merge_lease(location, options):
        held = listing()
        assert held
        ds = store.open()
        assert len(ds.versions()) == 5
        assert store.optimize()["fragments_removed"] == 5
        store.vacuum(0, enforce=False)
        assert len(store.open().versions()) == 1
        assert listing() == held
        waited: list[bool] = []
        on_wait = lambda: waited.append(True)  # noqa: E731
        with (
            pytest.raises(ConcurrentWriteError, match=r"waited 0\.3 s"),
            merge_lease(location, options, on_wait=on_wait),
        ):
            pass  # pragma: no cover
        assert waited == [True]
    assert store.open().count_rows() == 5
    store.merge({"id": [1.5], "v": ["c"]}, on=["id"])  # the lease was given back


def test_an_s3_lease_is_renewed_while_held_and_lost_when_its_holder_stalls(
    s3_server: Any,
) -> None:
    location = f"s3://{s3_server.make_bucket()}/t"
    options = dict(s3_server.storage_options)
    holder = ObjectLease(location, options, ttl=1.5)
    assert holder.acquire(5, None)
    taker = ObjectLease(location, options, ttl=1.5)
    assert not taker.acquire(4, None)  # renewed every 0.5 s: never expired
    assert holder.number > 1 and not holder.lost()
    with holder._guard:  # the holder stalls: no renewal while the taker waits out the TTL
        assert taker.acquire(5, None)
    deadline = time.monotonic() + 10
    while not holder.lost():  # its next renewal finds the taker's object
        assert time.monotonic() < deadline
        time.sleep(0.05)
    holder.release()  # harmless: it writes nothing over the taker's lease
    other = ObjectLease(location, options, ttl=1.5)
    assert not other.acquire(0.5, None)
    taker.release()
    assert other.acquire(1, None)
    other.release()


def test_an_s3_lease_number_created_again_after_cleanup_is_never_held(s3_server: Any) -> None:
    """Old lease objects are deleted; a writer that stalled between its LIST and its create
    could create a deleted number again: it is not the highest, so it is not a lease."""
    location = f"s3://{s3_server.make_bucket()}/t"
    options = dict(s3_server.storage_options)
    for _ in range(12):  # enough acquisitions for the cleanup to delete old numbers
        lease = ObjectLease(location, options, ttl=30)
        assert lease.acquire(5, None)
        lease.release()
    numbers, _ = lease._list()
    assert 1 not in numbers and max(numbers) == 12
    stale = ObjectLease(location, options, ttl=30)
    assert stale._create(1)  # the put succeeds: number 1 had been deleted
    assert not stale._is_highest(1)
    # A process that gave back number n first tries n + 1 directly: never past a live holder.
    holder = ObjectLease(location, options, ttl=30)
    assert holder.acquire(5, None) and holder.number == 13
    _lease._RELEASED[holder.prefix] = 12  # as another process that gave back 12 remembers
    assert not ObjectLease(location, options, ttl=30).acquire(0.3, None)
    _lease._RELEASED[holder.prefix] = 3  # long ago: 4 is taken, or re-created below the top
    assert not ObjectLease(location, options, ttl=30).acquire(0.3, None)
    holder.release()


def test_the_lease_wait_and_ttl_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from matrixos.errors import ConfigError

    monkeypatch.setenv(WAIT_ENV, "soon")
    with pytest.raises(ConfigError, match=WAIT_ENV), merge_lease(str(tmp_path)):
        pass  # pragma: no cover
    monkeypatch.setenv(WAIT_ENV, "0.2")
    errors: list[ConcurrentWriteError] = []
    inside = threading.Event()
    leave = threading.Event()

    def hold() -> None:
        with merge_lease(str(tmp_path)):
            inside.set()
            leave.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(10)
    try:
        with merge_lease(str(tmp_path)):
            pass  # pragma: no cover
    except ConcurrentWriteError as e:
        errors.append(e)
    leave.set()
    t.join()
    assert len(errors) == 1 and WAIT_ENV in str(errors[0].hint)


# ---------------------------------------------------------------------------- repair tags
def test_a_tag_whose_merge_never_committed_goes_once_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose lease could be lost (S3) tags the version it read; killed before its
    commit, it leaves a tag and no commit: kept while the merge may still be running,
    removed by the next writer once STALE_TAG old."""
    store = LanceStore(str(tmp_path / "t"))
    store.create({"id": [1.5], "v": ["a"]})
    store.merge({"id": [2.5], "v": ["b"]}, on=["id"])  # RECORDED: writers list the tags
    assert store.open().config()[RECORDED] == "true"
    assert store.open().tags.list() == {}  # a local lease cannot be lost: no tag
    tag_merge(store.open())
    store.append({"id": [3.5], "v": ["b"]})
    assert len(store.open().tags.list()) == 1
    monkeypatch.setattr(_lance_merge, "STALE_TAG", timedelta(0))
    store.append({"id": [4.5], "v": ["c"]})
    assert store.open().tags.list() == {}
    assert store.open().count_rows() == 4


def test_writers_list_the_tags_while_others_create_and_delete_theirs(tmp_path: Path) -> None:
    """Lance lists the tag files, then reads each: a tag deleted in between (another merge
    done with it) failed the listing, so an append beside S3 merges failed with "cannot
    repair an earlier merge ... Not found" (the torture run with --recorded-merges)."""
    store = LanceStore(str(tmp_path / "t"))
    store.create({"id": [0.5], "v": ["a"]})
    store.merge({"id": [1.5], "v": ["b"]}, on=["id"])  # RECORDED: writers list the tags
    stop = threading.Event()

    def churn() -> None:  # what S3 merges do: tag the version read, untag when done
        ds = store.open()
        while not stop.is_set():
            name = tag_merge(ds)
            ds.tags.delete(TAG_PREFIX + name)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for i in range(100):
            store.append({"id": [2.5 + i], "v": ["c"]})
    finally:
        stop.set()
        t.join()
    assert store.open().count_rows() == 102


def test_recorded_merges_start_with_a_fence_even_after_a_crash_midway(tmp_path: Path) -> None:
    """RECORDED goes ``fencing`` → fence → ``true``; a merge finding ``fencing`` (its first
    merger died before the fence) commits the fence again."""
    store = LanceStore(str(tmp_path / "t"))
    store.create({"id": [1.5], "v": ["a"]})
    store.open().update_config({RECORDED: FENCING})
    store.merge({"id": [2.5], "v": ["b"]}, on=["id"])
    ops = [h["operation"] for h in reversed(store.history())]
    assert ops == [
        "CREATE TABLE",
        "SET TBLPROPERTIES",
        "MERGE FENCE",
        "SET TBLPROPERTIES",
        "UPDATE",
    ]
    assert store.open().config()[RECORDED] == "true"


def test_a_declared_key_stays_not_null(tmp_path: Path) -> None:
    store = LanceStore(str(tmp_path / "t"))
    store.create({"id": [1], "v": ["a"]})
    store.merge({"id": [2], "v": ["b"]}, on=["id"])
    assert primary_key(store.schema()) == ["id"]
    assert RECORDED not in store.open().config()  # its writers never list the tags
    before = store.version()
    with pytest.raises(SchemaMismatch, match=r"'id'.*NULL"):
        store.append(pa.table({"id": pa.array([None], pa.int64()), "v": ["c"]}))
    assert store.version() == before
    # a key with NULLs already in the table is not declared; its merges take the lease
    other = LanceStore(str(tmp_path / "u"))
    other.create({"id": pa.array([1, None], pa.int64()), "v": ["a", "b"]})
    other.merge({"id": [2], "v": ["c"]}, on=["id"])
    assert primary_key(other.schema()) == []
    assert sorted(r["v"] for r in other.open().to_table().to_pylist()) == ["a", "b", "c"]


# --------------------------------------------------------------------- upstream, pinned
def _declared_table(tmp_path: Path, field: pa.Field, keys: list[Any]) -> tuple[str, pa.Schema]:
    import lance

    uri = str(tmp_path / f"u{len(list(tmp_path.iterdir()))}")
    schema = pa.schema([field, pa.field("v", pa.string())])
    lance.write_dataset(pa.table({"id": keys[:1], "v": ["a"]}, schema=schema), uri)
    return uri, schema


def _builder(ds: Any) -> Any:
    return ds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()


def _unfiltered(uri: str, ds: Any, src: pa.Table) -> None:
    """A merge committed with execute_uncommitted + commit: Lance keeps no key filter."""
    import lance

    tx, _ = _builder(ds).execute_uncommitted(src)
    lance.LanceDataset.commit(uri, tx, read_version=tx.read_version)


def _two_stale_merges(tmp_path: Path, field: pa.Field, keys: list[Any], *, commit: bool) -> int:
    """Rows after two merges planned on one version insert the same key (pylance)."""
    import lance

    uri, schema = _declared_table(tmp_path, field, keys)
    first, second = lance.dataset(uri), lance.dataset(uri)
    src = pa.table({"id": keys[1:], "v": ["b"]}, schema=schema)
    _builder(first).execute(src)
    if commit:  # the path of a merge with transaction properties
        _unfiltered(uri, second, src)
    else:
        _builder(second).conflict_retries(3).execute(src)
    return int(lance.dataset(uri).count_rows())


DECLARED = {PK: "true"}


def test_upstream_lance_checks_concurrent_inserts_on_a_declared_key_only(tmp_path: Path) -> None:
    """lance-format/lance#4585/#8949, pylance 14.0.2. If this fails after an upgrade, revisit
    storage/_lance_merge.py: an undeclared key may now be checked too (fine), or a declared
    one no longer (then every merge needs the lease)."""
    plain = pa.field("id", pa.int64())
    assert _two_stale_merges(tmp_path, plain, [1, 2], commit=False) == 3  # duplicated
    checked: list[tuple[pa.DataType, list[Any]]] = [
        (pa.int64(), [1, 2]),
        (pa.int32(), [1, 2]),
        (pa.uint64(), [1, 2]),
        (pa.string(), ["a", "b"]),
        (pa.large_binary(), [b"a", b"b"]),
    ]
    for t, keys in checked:
        f = pa.field("id", t, nullable=False, metadata=DECLARED)
        assert _two_stale_merges(tmp_path, f, keys, commit=False) == 2, t  # retried: updated
        # the filter of inserted keys does not survive execute_uncommitted + commit
        assert _two_stale_merges(tmp_path, f, keys, commit=True) == 3, t
    unchecked: list[tuple[pa.DataType, list[Any]]] = [
        (pa.float64(), [1.5, 2.5]),
        (pa.int16(), [1, 2]),
        (pa.date32(), [1, 2]),
    ]
    for t, keys in unchecked:
        f = pa.field("id", t, nullable=False, metadata=DECLARED)
        assert _two_stale_merges(tmp_path, f, keys, commit=False) == 3, t  # not checked


def test_upstream_lance_checks_a_declared_merge_against_a_recorded_one_in_one_order_only(
    tmp_path: Path,
) -> None:
    """pylance 14.0.2, what the lease and the fence (storage/_lance_merge.py) rely on:

    - an unfiltered (recorded) commit after a declared one inserting the same key is not
      checked: the key twice; the other order conflicts;
    - a declared merge conflicts with any concurrent unfiltered merge commit, even one that
      changes no row (the fence), and with a concurrent append; not with a config change."""
    import lance

    field = pa.field("id", pa.int64(), nullable=False, metadata=DECLARED)

    def run(before: Any, after: Any) -> int:
        uri, schema = _declared_table(tmp_path, field, [1])
        first, second = lance.dataset(uri), lance.dataset(uri)
        before(uri, first, schema)
        after(uri, second, schema)
        return int(lance.dataset(uri).count_rows())

    def declared(uri: str, ds: Any, schema: pa.Schema) -> None:
        _builder(ds).conflict_retries(0).execute(pa.table({"id": [2], "v": ["d"]}, schema=schema))

    def recorded(uri: str, ds: Any, schema: pa.Schema) -> None:
        _unfiltered(uri, ds, pa.table({"id": [2], "v": ["r"]}, schema=schema))

    def fence(uri: str, ds: Any, schema: pa.Schema) -> None:
        tx, _ = (
            ds.merge_insert("id")
            .when_matched_update_all()
            .execute_uncommitted(schema.empty_table())
        )
        lance.LanceDataset.commit(uri, tx, read_version=tx.read_version)

    def append(uri: str, ds: Any, schema: pa.Schema) -> None:
        lance.write_dataset(pa.table({"id": [9], "v": ["x"]}, schema=schema), uri, mode="append")

    def config(uri: str, ds: Any, schema: pa.Schema) -> None:
        ds.update_config({"k": "v"})

    assert run(declared, recorded) == 3  # not checked
    for before in (recorded, fence, append):
        with pytest.raises(OSError, match="Too many concurrent writers"):
            run(before, declared)
    assert run(config, declared) == 2
