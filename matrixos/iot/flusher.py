"""The flusher: acknowledged points from the write-ahead log into Delta commits, exactly once.

Every ``interval`` seconds (sooner when ``flush_points`` points wait), it seals the log's
segment, commits each table's waiting points as one Delta commit, and deletes the segments
whose points are all committed. Each commit carries a Delta transaction identifier
(``txn``: the log's id as application id, the highest log seq it holds as version), written
atomically with the rows; a commit is skipped when the table's log already holds that
application at that version, and a restart replays only records above it (``IotIngest``). So
a crash anywhere — before, during or after the commit, before the truncation — never loses
an acknowledged point nor commits one twice.

Points that may replace earlier ones (same series and time: late or repeated points) are
committed as a MERGE on (tags, ``time``) that keeps, field by field, the latest non-null value;
the usual in-order stream is a plain append. After a commit, delta-rs writes a checkpoint every
100 commits (``delta.checkpointInterval``) and the table compacts once it holds
``matrixos.autoCompact.minFiles`` small files, so commit time stays flat under continuous ingest;
compaction writes the merged files sorted by the series key (the table's ``matrixos.sort_by``:
tags, then ``time``), so a query for one series reads few row groups.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from matrixos.errors import MatrixOSError, NotSupported, TableNotFound
from matrixos.iot import series
from matrixos.storage.delta import DeltaStore, conform, quote_ident

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService
    from matrixos.iot.series import Entry, SeriesTable
    from matrixos.iot.wal import WriteAheadLog

# A committed entry stays visible through the pending source this long after its commit, for
# queries that loaded the table's previous version a moment before.
COMMITTED_GRACE_S = 5.0


class FlushTarget(Protocol):
    """What the flusher needs of the ingest service (``IotIngest``)."""

    service: TableService
    wal: WriteAheadLog

    def tables(self) -> list[SeriesTable]: ...
    def committed(self, st: SeriesTable, entries: Sequence[Entry], version: int) -> None: ...
    def forget(self, st: SeriesTable, entries: Sequence[Entry]) -> None: ...


log = logging.getLogger(__name__)


class Flusher:
    """The background thread of one ``IotIngest``."""

    def __init__(self, ingest: FlushTarget, interval: float) -> None:
        self.ingest = ingest
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one flush at a time
        self._thread: threading.Thread | None = None
        self.last_error: BaseException | None = None
        self.commits = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="iot-flusher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, *, flush: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        if flush:
            try:
                self.flush_now()
            except MatrixOSError as e:  # the points stay in the log for the next start
                log.warning("last flush failed: %s", e)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush_now()
            except Exception as e:  # keep flushing: the points are safe in the log
                log.exception("flush failed")
                self.last_error = e

    def flush_now(self) -> dict[str, Any]:
        """Commit every point acknowledged so far; returns what was done."""
        with self._lock:
            return self._flush()

    def _flush(self) -> dict[str, Any]:
        ingest = self.ingest
        upto = ingest.wal.rotate()
        stats: dict[str, Any] = {"upto": upto, "tables": 0, "points": 0}
        blocked: list[int] = []
        errors: list[str] = []
        for st in ingest.tables():
            with st.lock:
                todo = [e for e in st.entries if e.version is None and e.seq <= upto]
                waiting = [e.seq for e in st.entries if e.version is None and e.seq > upto]
            blocked.extend(waiting)
            if not todo:
                continue
            try:
                commit_entries(ingest, st, todo)
            except TableNotFound as e:
                log.warning(
                    "table %s is gone: %d acknowledged point(s) dropped (%s)",
                    st.ident,
                    sum(x.rows.num_rows for x in todo),
                    e,
                )
                ingest.forget(st, todo)
                continue
            except MatrixOSError as e:
                errors.append(f"{st.ident}: {e}")
                self.last_error = st.commit_error = e  # writes to it stop being acknowledged
                blocked.extend(x.seq for x in todo)
                continue
            st.commit_error = None
            self.commits += 1
            stats["tables"] += 1
            stats["points"] += sum(e.rows.num_rows for e in todo)
        safe = min(blocked) - 1 if blocked else upto
        stats["truncated"] = ingest.wal.truncate(min(safe, upto))
        now = time.monotonic()
        for st in ingest.tables():
            with st.lock:
                old = [
                    e
                    for e in st.entries
                    if e.version is not None and now - e.committed_at > COMMITTED_GRACE_S
                ]
            if old:
                ingest.forget(st, old)
        if errors:
            stats["errors"] = errors
        return stats


def commit_entries(ingest: FlushTarget, st: SeriesTable, entries: Sequence[Entry]) -> int:
    """Commit ``entries`` (in log order) to their table and mark them committed; returns the
    Delta version holding them (the existing one when a previous attempt committed them)."""
    rows = pa.concat_tables([e.rows for e in entries], promote_options="permissive")
    late = any(e.late for e in entries)
    if late:
        rows = series.last_wins(rows, st.keys)
    info = ingest.service.catalog.get_table(st.ident)
    store = ingest.service.store(info)
    if not isinstance(store, DeltaStore):
        raise NotSupported(f"table {st.ident} is not a Delta table: IoT points need one")
    version = max(e.seq for e in entries)
    with st.lock:
        for e in entries:  # from here a query may find them in the table: it checks the txn
            e.committing = True
    try:
        result = commit_once(
            store, rows, app_id=ingest.wal.id, version=version, keys=st.keys if late else None
        )
    except BaseException:
        with st.lock:
            for e in entries:
                e.committing = False
        raise
    # Marked at once, and under the same lock that ends ``committing``: a query that loads the
    # new version must not count them again. (Ending ``committing`` first left a moment when
    # they looked pending and uncommitted, and a count read them twice.)
    ingest.committed(st, entries, result)
    store.maybe_autocompact()
    ingest.service.touch(info)
    return result


def commit_once(
    store: DeltaStore,
    rows: pa.Table,
    *,
    app_id: str,
    version: int,
    keys: Sequence[str] | None = None,
) -> int:
    """Commit ``rows`` with the transaction ``(app_id, version)`` unless the table already
    holds it at ``version`` or later; a MERGE on ``keys`` (last write wins) when given, an
    append otherwise. New columns are added. Returns the table version holding the rows."""
    props = CommitProperties(
        max_commit_retries=max(store.commit_retries, 1),
        app_transactions=[Transaction(app_id, version)],
    )

    def run(dt: DeltaTable) -> dict[str, Any]:
        done = dt.transaction_version(app_id)
        if done is not None and done >= version:
            return {"num_added_rows": 0, "already_committed": True}
        data = conform(rows, pa.schema(dt.schema().to_arrow()), evolve=True, overwrite=False)  # type: ignore[arg-type]
        if keys:
            _merge(dt, data, keys, props)
        else:
            write_deltalake(
                dt,
                data,
                mode="append",
                schema_mode="merge",
                storage_options=store.storage_options,
                target_file_size=store.target_file_bytes,
                commit_properties=props,
            )
        return {"num_added_rows": data.num_rows}

    result = store.run_with_retries("IoT commit", run, retries=max(store.commit_retries, 10))
    return result.version


def _merge(dt: DeltaTable, data: pa.Table, keys: Sequence[str], props: CommitProperties) -> None:
    keys = [k for k in keys if k in data.column_names]
    match = [f"(t.{quote_ident(k)} IS NOT DISTINCT FROM s.{quote_ident(k)})" for k in keys]
    if series.DAY in data.column_names:  # prune the target to the days the points fall on
        days = sorted({d.isoformat() for d in data.column(series.DAY).to_pylist() if d})
        if days:
            listed = ", ".join(f"'{d}'" for d in days)  # ISO dates: digits and dashes only
            match.append(f"(t.{quote_ident(series.DAY)} IN ({listed}))")
    fields = [c for c in data.column_names if c not in keys and c != series.DAY]
    update = {quote_ident(c): f"coalesce(s.{quote_ident(c)}, t.{quote_ident(c)})" for c in fields}
    (
        dt.merge(
            data,
            " AND ".join(match),
            source_alias="s",
            target_alias="t",
            merge_schema=True,
            commit_properties=props,
        )
        .when_matched_update(update)
        .when_not_matched_insert_all()
        .execute()
    )


__all__ = ["COMMITTED_GRACE_S", "FlushTarget", "Flusher", "commit_entries", "commit_once"]
