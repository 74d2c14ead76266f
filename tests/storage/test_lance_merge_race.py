"""Two processes MERGE the same new keys into one Lance table at once, with and without a
kill right after a commit: each key ends up in the table exactly once, and every merge a
writer was told succeeded is in the table (a ledger).

The writers are real processes lined up by the test hook of ``storage/_lance_merge.py``: each
opens the table and plans its merge, waits for the ``go`` file, then commits; with
``exit-after-commit`` a writer exits (``os._exit``, as a kill -9) right after its commit, before
anything else. Also pins the upstream behaviour the fix relies on (lance-format/lance#4585,
#8949), so that an upgrade that changes it is noticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from matrixos.errors import SchemaMismatch
from matrixos.storage import _lance_merge
from matrixos.storage._lance_merge import (
    HOOK_ENV,
    PK,
    RECORDED,
    TAG_PREFIX,
    primary_key,
    tag_merge,
)
from matrixos.storage.lance import LanceStore

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


def _race(
    tmp_path: Path,
    key_type: str,
    *,
    crash: bool,
    meta: tuple[bool, bool] = (False, False),
    options: dict[str, str] | None = None,
    location: str | None = None,
) -> tuple[LanceStore, list[dict[str, Any]]]:
    """Two writers merge KEYS[key_type] (values w0, w1) at once, writer i with commit metadata
    if ``meta[i]``; the ledger of acknowledged merges."""
    loc = location or str(tmp_path / "t")
    store = LanceStore(loc, options)
    seed = pa.array(SEED[key_type], type=pa.type_for_alias(key_type))
    store.create(pa.table({"id": seed, "v": ["seed"]}))
    if meta[0] != meta[1]:  # one merge Lance checks, one recorded: declare the key first
        store.merge(pa.table({"id": seed, "v": ["seed"]}), on=["id"])
    hook = tmp_path / "hook"
    hook.mkdir()
    if crash:
        (hook / "exit-after-commit").touch()
    ledger = tmp_path / "ledger.jsonl"
    env = {**os.environ, HOOK_ENV: str(hook)}
    procs = []
    for i in range(2):
        spec = {
            "keys": KEYS[key_type],
            "type": key_type,
            "value": f"w{i}",
            "meta": meta[i],
            "ledger": str(ledger),
        }
        args = [sys.executable, "-c", WORKER, loc, json.dumps(options or {}), json.dumps(spec)]
        procs.append(subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 120
        while len(list(hook.glob("ready-*"))) < 2:  # both planned on the same version
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, dead[0].stderr.read() if dead[0].stderr else dead
            assert time.monotonic() < deadline, "the writers never got ready"
            time.sleep(0.01)
        (hook / "go").touch()
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    errors = [p.stderr.read() if p.stderr else "" for p in procs]
    assert codes == ([9, 9] if crash else [0, 0]), errors
    acked = [json.loads(line) for line in ledger.read_text().splitlines()] if not crash else []
    return store, acked


def _check(store: LanceStore, key_type: str, acked: list[dict[str, Any]]) -> None:
    rows = store.open().to_table().to_pylist()
    counts = Counter(r["id"] for r in rows)
    assert {k: n for k, n in counts.items() if n > 1} == {}, rows
    assert set(counts) >= set(KEYS[key_type]) | set(SEED[key_type])
    values = {r["id"]: r["v"] for r in rows}
    if acked:  # both acknowledged: the later commit's values, as if run one after the other
        last = max(acked, key=lambda a: a["version"])["value"]
        assert {values[k] for k in KEYS[key_type]} == {last}
    else:  # both committed, neither acknowledged: one writer's values, never a mix
        assert len({values[k] for k in KEYS[key_type]}) == 1
    assert not [t for t in store.open().tags.list() if t.startswith(TAG_PREFIX)]


NONE, BOTH, MIXED = (False, False), (True, True), (True, False)


@pytest.mark.parametrize(
    ("key_type", "meta"),
    [("int64", NONE), ("string", NONE), ("double", NONE), ("int64", BOTH), ("int64", MIXED)],
    ids=["int-declared", "string-declared", "double-recorded", "int-commit-metadata", "mixed"],
)
def test_two_writers_merging_the_same_new_keys_insert_each_once(
    tmp_path: Path, key_type: str, meta: tuple[bool, bool]
) -> None:
    store, acked = _race(tmp_path, key_type, crash=False, meta=meta)
    assert sorted(a["value"] for a in acked) == ["w0", "w1"]
    _check(store, key_type, acked)
    repairs = [h for h in store.history() if h["operation"] == "DELETE"]
    if key_type == "double" or meta == BOTH:  # Lance cannot check these: the writer repairs
        assert len(repairs) == 1
    elif meta == MIXED:  # repaired if the recorded merge committed last, else Lance refused
        assert len(repairs) <= 1
    else:  # declared key: Lance refused the later insert, the merge ran again as an update
        assert primary_key(store.schema()) == ["id"]
        assert repairs == []


@pytest.mark.parametrize(
    ("key_type", "meta"),
    [("int64", NONE), ("double", NONE), ("int64", BOTH), ("int64", MIXED)],
    ids=["int-declared", "double-recorded", "int-commit-metadata", "mixed"],
)
def test_writers_killed_right_after_their_merge_commit_leave_no_duplicate(
    tmp_path: Path, key_type: str, meta: tuple[bool, bool]
) -> None:
    """Both writers die right after committing: the next writer of the table (here an append
    of another key) settles what they left, before its own commit."""
    store, _ = _race(tmp_path, key_type, crash=True, meta=meta)
    more = pa.array([99 if key_type == "int64" else 9.5], type=pa.type_for_alias(key_type))
    store.append(pa.table({"id": more, "v": ["later"]}))
    _check(store, key_type, [])


@pytest.mark.parametrize("key_type", ["int64", "double"])
def test_killed_merges_on_s3_leave_no_duplicate(
    tmp_path: Path, s3_server: Any, key_type: str
) -> None:
    location = f"s3://{s3_server.make_bucket()}/t"
    options = dict(s3_server.storage_options)
    store, _ = _race(tmp_path, key_type, crash=True, options=options, location=location)
    more = pa.array([99 if key_type == "int64" else 9.5], type=pa.type_for_alias(key_type))
    LanceStore(location, options).merge(pa.table({"id": more, "v": ["x"]}), on=["id"])
    _check(store, key_type, [])


def test_a_tag_whose_merge_never_committed_goes_once_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer killed between tagging and committing leaves a tag and no commit: kept while
    the merge may still be running, removed by the next writer once STALE_TAG old."""
    store = LanceStore(str(tmp_path / "t"))
    store.create({"id": [1.5], "v": ["a"]})
    assert RECORDED not in store.open().config()
    tag_merge(store.open())
    assert store.open().config()[RECORDED] == "true"  # writers now list the tags
    store.append({"id": [2.5], "v": ["b"]})
    assert len(store.open().tags.list()) == 1
    monkeypatch.setattr(_lance_merge, "STALE_TAG", timedelta(0))
    store.append({"id": [3.5], "v": ["c"]})
    assert store.open().tags.list() == {}
    assert store.open().count_rows() == 3


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
    # a key with NULLs already in the table is not declared; its merges are repaired instead
    other = LanceStore(str(tmp_path / "u"))
    other.create({"id": pa.array([1, None], pa.int64()), "v": ["a", "b"]})
    other.merge({"id": [2], "v": ["c"]}, on=["id"])
    assert primary_key(other.schema()) == []
    assert sorted(r["v"] for r in other.open().to_table().to_pylist()) == ["a", "b", "c"]


# --------------------------------------------------------------------- upstream, pinned
def _two_stale_merges(tmp_path: Path, field: pa.Field, keys: list[Any], *, commit: bool) -> int:
    """Rows after two merges planned on one version insert the same key (pylance)."""
    import lance

    uri = str(tmp_path / f"u{len(list(tmp_path.iterdir()))}")
    schema = pa.schema([field, pa.field("v", pa.string())])
    lance.write_dataset(pa.table({"id": keys[:1], "v": ["a"]}, schema=schema), uri)
    first, second = lance.dataset(uri), lance.dataset(uri)
    src = pa.table({"id": keys[1:], "v": ["b"]}, schema=schema)

    def builder(ds: Any) -> Any:
        return ds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()

    builder(first).execute(src)
    if commit:  # the path of a merge with transaction properties
        tx, _ = builder(second).execute_uncommitted(src)
        lance.LanceDataset.commit(uri, tx, read_version=tx.read_version)
    else:
        builder(second).conflict_retries(3).execute(src)
    return int(lance.dataset(uri).count_rows())


def test_upstream_lance_checks_concurrent_inserts_on_a_declared_key_only(tmp_path: Path) -> None:
    """lance-format/lance#4585/#8949, pylance 14.0.2. If this fails after an upgrade, revisit
    storage/_lance_merge.py: an undeclared key may now be checked too (fine), or a declared
    one no longer (then every merge needs the recorded repair)."""
    declared = {PK: "true"}
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
        f = pa.field("id", t, nullable=False, metadata=declared)
        assert _two_stale_merges(tmp_path, f, keys, commit=False) == 2, t  # retried: updated
        # the filter of inserted keys does not survive execute_uncommitted + commit
        assert _two_stale_merges(tmp_path, f, keys, commit=True) == 3, t
    unchecked: list[tuple[pa.DataType, list[Any]]] = [
        (pa.float64(), [1.5, 2.5]),
        (pa.int16(), [1, 2]),
        (pa.date32(), [1, 2]),
    ]
    for t, keys in unchecked:
        f = pa.field("id", t, nullable=False, metadata=declared)
        assert _two_stale_merges(tmp_path, f, keys, commit=False) == 3, t  # not checked
