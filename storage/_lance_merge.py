"""Lance MERGE without duplicated keys: two writers inserting the same new key, crash-safe,
and no version of the table ever holding a key twice.

Two ``merge_insert`` commits that each insert a key the other also inserts add disjoint
fragments, so Lance's conflict check finds nothing in common and both commit: the key is in
the table twice (lance-format/lance#4585, #8949). Lance 14 checks it only when the merge key is
the table's declared (unenforced) primary key: the merge then records a filter of the keys it
inserted in its transaction, and a commit whose inserted keys meet those of a concurrent
commit fails with a retryable conflict. The check is one-sided: a commit without that filter
(another key, ``execute_uncommitted`` + ``commit``) is not compared with a filtered commit that
landed meanwhile, while a filtered commit conflicts with any concurrent unfiltered merge, even
an empty one (tests/storage/test_lance_merge_race.py pins all of this). MatrixOS uses it so:

1. **Declared key** (:func:`declare_key`): the first merge on a Lance table declares its key
   columns the table's primary key (``lance-schema:unenforced-primary-key``, positions for a
   composite key), when every key column is a type Lance hashes into that filter (32/64-bit
   integers, strings, binaries; for other types Lance silently skips the check) and holds no
   NULL (a declared key column is NOT NULL: Lance refuses the declaration otherwise, and later
   rows with a NULL key). Merges on exactly that key commit through ``execute``; of two that
   insert one key, the later commit fails and the merge runs again, updating the key.
2. **Merge lease** (``storage/_lease.py``): every other merge that inserts (another key, keys
   of other types, keys with NULLs, commit metadata, a table declared by someone else) takes
   the table's lease, opens the table, commits, and gives the lease back: such merges run one
   after the other, and the second reads the first one's keys. Before a table's first such
   merge reads it, :func:`start_recorded` sets :data:`RECORDED` in the table's config
   (``fencing``), commits a fence (an empty merge: ``MERGE FENCE``) and sets it ``true``.
   Declared merges that insert take the lease when the table they read has :data:`RECORDED`
   (Lance would not check a lease holder's later commit against theirs); those that read it
   without the flag run with no Lance retry, so one still in flight when the flag is set
   conflicts with the fence, starts over in MatrixOS, sees the flag and takes the lease.
3. **Recorded repair** (:func:`tag_merge`, :func:`settle_merges`), for a lease that can be
   lost (S3: a holder stalled past its TTL, after which another merge takes it over): the
   merge tags the version it reads ``matrixos-merge-<id>`` (a Lance tag: a small object under
   ``_refs/tags``), commits with ``matrixos.merge_id`` and ``matrixos.merge_on`` in its
   transaction properties and deletes its tag. Such a merge (2.) whose commit is not
   the one right after its read (a writer outside MatrixOS, or a lost lease) deletes the older
   copy of each key it inserted (:func:`drop_duplicate_inserts`: as if the merges had run one
   after the other). A writer killed between its commit and that repair leaves the tag: the
   next MatrixOS writer of the table (any append, merge, update, delete or optimize, and the
   merge that takes an expired lease over) lists the tags, finds the commit by its id and
   makes the same deterministic repair (idempotent) and deletes the tag. A tag whose merge
   never committed is deleted once :data:`STALE_TAG` old. Local leases cannot be lost while
   their holder lives (``flock``), so local merges make no tag.

So no version committed by MatrixOS writers holds a key twice, except on S3 between a stalled
holder's late commit and its repair. A holder checks its lease right before committing (not
renewed for two thirds of its TTL: commit nothing, start over under a new lease), so that
takes a stall between that check and the commit request itself. Writers outside MatrixOS
take no lease: Lance checks their merges on the declared key; on other keys a duplicate is
repaired only when a MatrixOS merge commits after theirs. Only tables with
:data:`RECORDED` (in every manifest, read with it) have their tags listed, so writers of other
tables make no extra request.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from lance import LanceDataset

log = logging.getLogger(__name__)

PK = "lance-schema:unenforced-primary-key"
PK_POSITION = "lance-schema:unenforced-primary-key:position"
TAG_PREFIX = "matrixos-merge-"
MERGE_ID = "matrixos.merge_id"
MERGE_ON = "matrixos.merge_on"
#: Set in a table's config (in every manifest, read with it) before its first recorded merge:
#: its merges that insert take the merge lease, and its writers list the tags (a LIST request
#: on S3; other tables skip it). ``fencing`` until the fence is committed, then ``true``.
RECORDED = "matrixos.recorded_merges"
FENCING = "fencing"
#: A tag whose merge has not committed after this long belongs to a writer that died.
STALE_TAG = timedelta(hours=1)
#: Test hook: a folder; a merge waits there between reading and committing, and exits after
#: its commit when the folder holds ``exit-after-commit`` (tests/storage/test_lance_merge_race).
HOOK_ENV = "MATRIXOS_TEST_LANCE_MERGE_HOOK"
#: How often a declaration that conflicted with another writer's commit looks again.
DECLARE_ATTEMPTS = 5
#: (dataset URI, key columns) whose declaration failed on a NULL key in this process.
_HAS_NULLS: set[tuple[str, tuple[str, ...]]] = set()
#: (dataset URI, merge id) → the last version read looking for that merge's commit.
_SCANNED: dict[tuple[str, str], int] = {}


def _detectable(t: pa.DataType) -> bool:
    """Key types whose inserted values Lance 14 hashes into a merge's key filter
    (tests/storage/test_lance_merge_race.py pins the list: others never conflict)."""
    return (
        t in (pa.int32(), pa.int64(), pa.uint32(), pa.uint64())
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    )


def primary_key(schema: pa.Schema) -> list[str]:
    """The table's declared primary key columns, in key order ([] when none)."""
    found: list[tuple[int, str]] = []
    for i, f in enumerate(schema):
        meta = f.metadata or {}
        if meta.get(PK.encode()) == b"true":
            pos = meta.get(PK_POSITION.encode())
            found.append((int(pos) if pos else i + 1, f.name))
    return [name for _, name in sorted(found)]


def declare_key(ds: LanceDataset, on: Sequence[str]) -> bool:
    """Declare ``on`` the primary key of the table at ``ds`` (NOT NULL first); True when it is
    declared now (by this call, or by a concurrent merge's that won the race), False when it
    cannot be (a type Lance does not check, a NULL key, another key declared).

    A declaration is two commits (NOT NULL, then the key's metadata); another merge declaring
    the same key at once makes ours conflict, maybe between its two: ours looks again at the
    latest version and finishes it, until the key is declared (else that merge would take
    the recorded path, and mark a table whose key Lance checks as one with recorded merges)."""
    for attempt in range(DECLARE_ATTEMPTS):
        schema = ds.schema
        declared = primary_key(schema)
        if declared:  # (the caller's dataset is older than ``ds`` after a conflict)
            return attempt > 0 and sorted(declared) == sorted(on)
        if (ds.uri, tuple(on)) in _HAS_NULLS or any(
            k not in schema.names or not _detectable(schema.field(k).type) for k in on
        ):
            return False
        try:
            nullable: list[Any] = [
                {"path": k, "nullable": False} for k in on if schema.field(k).nullable
            ]
            if nullable:
                ds.alter_columns(*nullable)  # Lance refuses it while a key is NULL in any row
            ds.update_field_metadata(
                {k: {PK: "true", PK_POSITION: str(i + 1)} for i, k in enumerate(on)}
            )
        except Exception as e:  # NULL keys, or a concurrent commit
            text = str(e).lower()
            if "conflict" in text or "preempted" in text:
                try:
                    ds = ds.checkout_version(ds.latest_version)
                except Exception:
                    return False
                continue
            log.info("merge key %s not declared on %s: %s", list(on), ds.uri, e)
            if "null" in text:  # Lance scans the column to say so: once per process
                _HAS_NULLS.add((ds.uri, tuple(on)))
            return False
        return True
    return False


def start_recorded(ds: LanceDataset, on: Sequence[str], commit: Any) -> bool:
    """Under the merge lease, before a table's first recorded merge reads it: set
    :data:`RECORDED` (``fencing``, then ``true``), committing a fence between the two that
    makes a declared merge still in flight from before fail and run again under the lease
    (see the module docstring). ``commit(tx)`` commits a transaction. True if it committed."""
    state = ds.config().get(RECORDED)
    if state == "true":
        return False
    if state is None:
        ds.update_config({RECORDED: FENCING})
    tx, _ = (
        ds.merge_insert(list(on))
        .when_matched_update_all()
        .execute_uncommitted(ds.schema.empty_table())
    )  # an empty update: no row changes, but a commit Lance's key check conflicts with
    tx.transaction_properties = {"matrixos.operation": "MERGE FENCE"}
    commit(tx)
    ds.checkout_version(ds.latest_version).update_config({RECORDED: "true"})
    return True


def tag_merge(ds: LanceDataset) -> str:
    """Tag the version ``ds`` reads for a merge whose lease can be lost; its id."""
    merge_id = uuid.uuid4().hex
    ds.tags.create(TAG_PREFIX + merge_id, int(ds.version))
    return merge_id


def untag_merge(ds: LanceDataset, merge_id: str) -> None:
    """The merge's repair is done (or was not needed): delete its tag."""
    try:
        ds.tags.delete(TAG_PREFIX + merge_id)
    except Exception as e:  # another writer settled it first
        log.debug("merge tag %s already gone: %s", merge_id, e)


def merge_properties(merge_id: str, on: Sequence[str]) -> dict[str, str]:
    """The transaction properties that let another writer find and repair the merge."""
    return {MERGE_ID: merge_id, MERGE_ON: json.dumps(list(on))}


def inserted_keys(ds: LanceDataset, version: int, on: Sequence[str], tx: Any) -> pa.Table:
    """The keys of the rows the commit ``tx`` at ``version`` inserted: with stable row ids,
    the rows created at that version (an updated row keeps its creation version, compaction
    keeps both); else the keys in the fragments it added that still exist."""
    if ds.has_stable_row_ids:
        return ds.to_table(columns=list(on), filter=f"_row_created_at_version = {int(version)}")
    parts = []
    for meta in getattr(tx.operation, "new_fragments", None) or []:
        fragment = ds.get_fragment(meta.id)
        if fragment is not None:
            parts.append(fragment.to_table(columns=list(on)))
    return pa.concat_tables(parts) if parts else ds.schema.empty_table().select(list(on))


def settle_merges(ds: LanceDataset, repair: Any) -> bool:
    """Finish the repairs of merges whose writer died after its commit (see the module
    docstring); ``repair(ds, keys)`` deletes duplicates of ``keys``. True if one committed."""
    if RECORDED not in ds.config():  # no recorded merge ever: nothing to list (no request)
        return False
    tags = _merge_tags(ds)
    repaired = False
    for name, info in sorted(tags.items(), key=lambda kv: int(kv[1]["version"])):
        merge_id = name[len(TAG_PREFIX) :]
        found = _find_commit(ds, int(info["version"]), merge_id)
        if found is None:
            created = info.get("created_at")
            if isinstance(created, datetime) and _age(created) > STALE_TAG:
                untag_merge(ds, merge_id)  # its writer died before committing: nothing to repair
            continue
        version, tx, on = found
        # The tagged version, not the transaction's read_version: a commit rebased over
        # concurrent ones records the version it was rebased onto.
        if version > int(info["version"]) + 1:
            log.warning("repairing the merge committed at version %d of %s", version, ds.uri)
            if repair(ds, inserted_keys(ds, version, on, tx)) is not None:
                repaired = True
        untag_merge(ds, merge_id)
    return repaired


def drop_duplicate_inserts(ds: LanceDataset, keys: pa.Table, retries: int) -> int | None:
    """Delete the rows that concurrent merges inserted twice for ``keys``, keeping the row
    of the later commit (as if the merges had run one after the other); the version of the
    last delete, None when there was nothing to delete."""
    import pyarrow.compute as pc

    if "_row_created_at_version" not in _system_columns(ds):
        return None
    on = keys.column_names
    first = on[0]
    values = pc.unique(keys.column(first).combine_chunks())
    doomed: list[int] = []
    for start in range(0, len(values), 1000):
        chunk = values.slice(start, 1000).to_pylist()
        literal = ", ".join(sql_literal(v) for v in chunk if v is not None)
        if not literal:
            continue
        found = ds.to_table(
            columns=[*on, "_rowid", "_row_created_at_version"],
            filter=f"{_lance_ident(first)} IN ({literal})",
        )
        if found.num_rows < 2:
            continue
        order = found.sort_by(
            [(c, "ascending") for c in on]
            + [("_row_created_at_version", "descending"), ("_rowid", "descending")]
        )
        seen: set[tuple[Any, ...]] = set()
        cols = [order.column(c).to_pylist() for c in on]
        for i, rid in enumerate(order.column("_rowid").to_pylist()):
            key = tuple(col[i] for col in cols)
            if key in seen:
                doomed.append(int(rid))
            seen.add(key)
    version = None
    for start in range(0, len(doomed), 1000):
        ids = ", ".join(str(r) for r in doomed[start : start + 1000])
        log.info("removing %d rows a concurrent merge duplicated", len(doomed))
        ds.delete(f"_rowid IN ({ids})", conflict_retries=retries)
        version = int(ds.version)
    return version


def _system_columns(ds: LanceDataset) -> set[str]:
    try:
        ds.to_table(columns=["_row_created_at_version"], limit=0)
    except Exception:
        return set()
    return {"_row_created_at_version"}


def _lance_ident(name: str) -> str:
    """``name`` as a backtick-quoted identifier of Lance's filter SQL (a key column's name is
    user input: quoted by sqlglot, never pasted)."""
    from sqlglot import exp

    return str(exp.to_identifier(name, quoted=True).sql(dialect="spark"))


def sql_literal(v: Any) -> str:
    """``v`` as a literal of Lance's filter SQL: a key value is user data, written by sqlglot."""
    from sqlglot import exp

    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)):
        return repr(v)
    return str(exp.Literal.string(v if isinstance(v, str) else str(v)).sql(dialect="duckdb"))


def _merge_tags(ds: LanceDataset) -> dict[str, Any]:
    """The merge tags of the table. Lance lists the tag files, then reads each: a tag another
    writer deletes in between fails the whole listing ("Not found"), so list again; after a
    few such races leave them to the next writer."""
    for _ in range(5):
        try:
            found = ds.tags.list()
        except Exception as e:
            if "not found" not in str(e).lower():
                raise
            continue
        return {name: info for name, info in found.items() if name.startswith(TAG_PREFIX)}
    log.info("merge tags of %s kept changing while listed: left to the next writer", ds.uri)
    return {}


def _find_commit(ds: LanceDataset, since: int, merge_id: str) -> tuple[int, Any, list[str]] | None:
    """(version, transaction, key columns) of the commit carrying ``merge_id``. Versions
    already read for it in this process are not read again (a tag left by a writer that died
    before its commit is looked for by every write until it is stale)."""
    seen = _SCANNED.get((ds.uri, merge_id), since)
    for version in range(seen + 1, int(ds.version) + 1):
        try:
            tx = ds.read_transaction(version)
        except Exception:  # a version cleaned up by vacuum
            continue
        props = (tx.transaction_properties or {}) if tx is not None else {}
        if props.get(MERGE_ID) == merge_id:
            _SCANNED.pop((ds.uri, merge_id), None)
            return version, tx, json.loads(props[MERGE_ON])
    _SCANNED[(ds.uri, merge_id)] = max(seen, int(ds.version))
    return None


def _age(when: datetime) -> timedelta:
    return datetime.now(UTC) - (when if when.tzinfo else when.replace(tzinfo=UTC))


def merge_hook(point: str) -> None:
    """The test hook (:data:`HOOK_ENV`, a folder of one writer). At ``point`` (``acquire``:
    about to take the lease; ``waiting``: another writer holds it; ``planned``: read, not yet
    committed; ``committed``) it leaves ``at-<point>``; with ``pause-<point>`` in the folder it
    then waits for ``go-<point>``; after ``committed`` it exits as if killed -9 when the folder
    holds ``exit-after-commit``."""
    folder = os.environ.get(HOOK_ENV)
    if not folder:
        return
    with open(os.path.join(folder, f"at-{point}"), "w"):
        pass
    if os.path.exists(os.path.join(folder, f"pause-{point}")):
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(folder, f"go-{point}")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"test hook: no go-{point} in {folder}")
            time.sleep(0.005)
    if point == "committed" and os.path.exists(os.path.join(folder, "exit-after-commit")):
        os._exit(9)  # as a kill -9: no cleanup, no repair, the lease not given back
