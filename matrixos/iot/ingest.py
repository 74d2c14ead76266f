"""``IotIngest``: the one write path of IoT points — HTTP line protocol, JSON, MQTT and file
drops all end here.

A write is checked (``MODIFY`` on the table, or ``CREATE`` for a new one, for the caller's
principal), typed against the table (a type conflict is refused before anything is
acknowledged), appended to the write-ahead log (``matrixos.iot.wal``) and acknowledged once
fsynced. From then on queries see the points (``pending_points``, registered with the table
service as a pending source), and the flusher (``matrixos.iot.flusher``) commits them to the
Delta table in micro-batches, exactly once.

A table a write names that does not exist yet is created on that write, before the points are
acknowledged (schema from the points, partitioned by ``day``): so an acknowledged point is
always visible to ``lh.sql`` at once.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> line = b"cpu,host=a usage=0.5 1700000000000000000"
    >>> with IotIngest(lh) as ingest:
    ...     ack = ingest.write_lines(lh.principal, "iot.cpu", line)
    ...     (ack.points, lh.sql("SELECT host, usage FROM iot.cpu").fetchall())
    (1, [('a', 0.5)])
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from matrixos._exit import SERVICES, OpenAtExit
from matrixos.catalog.names import TableIdent
from matrixos.catalog.pending import PendingRows
from matrixos.errors import IngestBusy, MatrixOSError, TableNotFound
from matrixos.iot import lineproto, series
from matrixos.iot.flusher import Flusher
from matrixos.iot.jsonpoints import parse_json
from matrixos.iot.series import Entry, SeriesTable
from matrixos.iot.wal import WriteAheadLog, encode

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.session import Lakehouse

log = logging.getLogger(__name__)


@dataclass
class WriteAck:
    """What a write did: ``points`` acknowledged (durable), ``rejected`` lines refused (only
    with partial writes), ``tables`` written."""

    points: int
    rejected: list[dict[str, Any]] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)


class IotIngest:
    """The IoT ingest service of one lakehouse: a write-ahead log in ``wal_dir`` (default
    ``<warehouse>/_iot_wal`` for a local warehouse, ``~/.matrixos/iot_wal/<hash>`` otherwise)
    and a background flusher committing every ``flush_interval`` seconds or ``flush_points``
    points. ``max_pending_bytes`` bounds the points held (acknowledged, not yet committed):
    beyond it writes get ``IngestBusy`` (HTTP 429), never unbounded memory.
    """

    def __init__(
        self,
        lakehouse: Lakehouse,
        wal_dir: str | Path | None = None,
        *,
        flush_interval: float = 1.0,
        flush_points: int = 500_000,
        max_pending_bytes: int = 512 << 20,
        fsync: bool = True,
        start: bool = True,
    ) -> None:
        self.lakehouse = lakehouse
        self.service = lakehouse.service
        self.wal = WriteAheadLog(wal_dir or default_wal_dir(lakehouse), fsync=fsync)
        self.flush_points = flush_points
        self.max_pending_bytes = max_pending_bytes
        self._tables: dict[str, SeriesTable] = {}
        self._lock = threading.Lock()
        self._pending_bytes = 0
        self._uncommitted = 0
        self.acknowledged = 0  # points acknowledged by this process
        self.flusher = Flusher(self, flush_interval)
        self._unregister = self.service.register_pending_source(self._pending_source)
        self._closed = False
        self._replay()
        if start:
            self.flusher.start()
        _OPEN.add(self)  # left open, it is closed (a last flush) before the interpreter exits

    def __enter__(self) -> IotIngest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, *, flush: bool = True) -> None:
        """Stop the flusher (after a last flush, unless ``flush=False``) and close the log.
        Points not committed stay in the log for the next start. Closing twice is a no-op."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _OPEN.discard(self)
        self.flusher.stop(flush=flush)
        self.wal.close()
        self._unregister()

    # -- writes -----------------------------------------------------------------------------
    def write_lines(
        self,
        principal: Principal,
        target: str,
        body: bytes | str,
        precision: str | None = "ns",
        *,
        partial: bool = False,
        source: str = "line protocol",
    ) -> WriteAck:
        """Line protocol into ``target``: ``schema.table`` (every measurement into it, the
        measurement in its ``measurement`` tag column when the body has several) or a schema
        (``schema``: one table per measurement)."""
        batch = lineproto.parse(body, precision, source=source, partial=partial)
        ack = WriteAck(0, batch.rejected)
        for ident, points, tags in self._routes(target, batch):
            ack.points += self.write_points(principal, ident, points, tags, source=source)
            ack.tables.append(str(ident))
        return ack

    def write_json(
        self,
        principal: Principal,
        target: str,
        payload: Any,
        precision: str | None = "ns",
        *,
        extra_tags: dict[str, str] | None = None,
        source: str = "JSON points",
    ) -> WriteAck:
        """JSON points into ``target`` (see ``matrixos.iot.jsonpoints``)."""
        points, tags = parse_json(payload, precision, extra_tags=extra_tags, source=source)
        ident = TableIdent.parse(target)
        n = self.write_points(principal, ident, points, tags, source=source)
        return WriteAck(n, [], [str(ident)])

    def _routes(
        self, target: str, batch: lineproto.Batch
    ) -> Iterator[tuple[TableIdent, pa.Table, list[str]]]:
        if "." not in target:  # a schema: a table per measurement
            for m, points in batch.tables.items():
                yield TableIdent.parse(f"{target}.{m}"), points, batch.tags.get(m, [])
            return
        ident = TableIdent.parse(target)
        items = list(batch.tables.items())
        if len(items) == 1:
            m, points = items[0]
            yield ident, points, batch.tags.get(m, [])
            return
        if not items:
            return
        parts = []
        tags: list[str] = ["measurement"]
        for m, points in items:
            parts.append(points.append_column("measurement", pa.array([m] * points.num_rows)))
            tags += [t for t in batch.tags.get(m, []) if t not in tags]
        merged = pa.concat_tables(parts, promote_options="permissive").sort_by(lineproto.LINE)
        yield ident, merged, tags

    def write_points(
        self,
        principal: Principal,
        ident: TableIdent,
        points: pa.Table,
        tags: Sequence[str],
        *,
        source: str = "points",
    ) -> int:
        """Parsed points (tag columns, typed fields, ``time`` int64 ns, optional ``_line``)
        into one table; returns how many were acknowledged (durable and visible)."""
        if not points.num_rows:
            return 0
        lines = points.column(lineproto.LINE) if lineproto.LINE in points.column_names else None
        rows = series.to_rows(points)
        st = self._table(principal, ident, rows, tags)
        with st.lock:
            rows = series.conform(rows, st.schema, st.tags, lines=lines, source=source)
            new_tags = [t for t in tags if t not in st.tags]
            if new_tags:
                self._add_tags(st, new_tags)
            st.schema = series.merged_schema(st.schema, rows)
        spans, repeats = _series_spans_and_repeats(rows, st.tags)
        if repeats:  # a point repeated within the body: the later line wins
            rows = series.last_wins(rows, st.keys)
        if st.commit_error is not None:
            self.flusher.wake()  # try the commit again; acknowledge once it went through
            raise IngestBusy(
                f"points not acknowledged: the last commit to table {ident} failed "
                f"({st.commit_error}); nothing written",
                retry_after=5.0,
                storage_failure=True,
                hint="check that the warehouse is reachable and writable; points already "
                "acknowledged are safe in the write-ahead log",
            )
        if self._pending_bytes + rows.nbytes > self.max_pending_bytes:
            self.flusher.wake()
            raise IngestBusy(
                f"ingest is at capacity: {self._pending_bytes >> 20} MiB of points wait for "
                f"their commit (limit {self.max_pending_bytes >> 20} MiB); nothing written",
                retry_after=min(max(1.0, self.flusher.interval), 10.0),
                hint="retry after the Retry-After delay; send fewer, larger batches",
            )
        if st.latest is None:
            self._load_latest(st)
        payload = encode(str(ident), {"tags": st.tags}, rows)

        def durable(seqs: list[int]) -> None:
            # Runs in log order (the log's writer thread): "late" and "last" agree with it.
            with st.lock:
                latest = st.latest if st.latest is not None else {}
                late = False
                for key, lo, hi in spans:
                    prev = latest.get(key)
                    if prev is not None and lo <= prev:
                        late = True
                    if prev is None or hi > prev:
                        latest[key] = hi
                st.entries.append(Entry(seqs[0], rows, late))
            with self._lock:
                self._pending_bytes += rows.nbytes
                self._uncommitted += rows.num_rows

        self.wal.append([payload], durable)
        self.acknowledged += rows.num_rows
        if self._uncommitted >= self.flush_points:
            self.flusher.wake()
        return rows.num_rows

    # -- tables -----------------------------------------------------------------------------
    def _table(
        self, principal: Principal, ident: TableIdent, rows: pa.Table, tags: Sequence[str]
    ) -> SeriesTable:
        """The table's state, after checking ``principal`` may write it; a table that does not
        exist is created (``CREATE`` checked) with the points' schema."""
        key = str(ident)
        st = self._tables.get(key)
        if st is not None:
            self.service.authorize(principal, "MODIFY", st.info)
            return st
        with self._lock:
            st = self._tables.get(key)
            if st is None:
                st = self._open_table(principal, ident, rows, tags)
                self._tables[key] = st
                return st
        self.service.authorize(principal, "MODIFY", st.info)
        return st

    def _open_table(
        self, principal: Principal, ident: TableIdent, rows: pa.Table, tags: Sequence[str]
    ) -> SeriesTable:
        try:
            info = self.service.resolve(principal, ident, "MODIFY")
        except TableNotFound:
            schema = pa.schema([pa.field(f.name, f.type) for f in rows.schema])
            info = self.service.create_table(
                principal,
                ident,
                schema=schema,
                partition_by=[series.DAY],
                properties=series.table_properties(tags),
                mode="ignore",
            )
            self.service.authorize(principal, "MODIFY", info)
        store = self.service.store(info)
        schema = store.schema(self.service.snapshot(info))
        known = series.tags_of(info.properties)
        if known and series.SORT_PROPERTY not in info.properties:  # made before sort orders
            info = self.service.update_properties(
                info, {**info.properties, **series.tag_properties(known)}
            )
        return SeriesTable(ident, info, known, schema)

    def _add_tags(self, st: SeriesTable, new: list[str]) -> None:
        st.tags = [*st.tags, *new]
        props = {**st.info.properties, **series.tag_properties(st.tags)}
        st.info = self.service.update_properties(st.info, props)

    def _load_latest(self, st: SeriesTable) -> None:
        """Each series' latest time in the table (committed and pending), once per table."""
        latest: dict[str, int] = {}
        if st.schema is not None and st.tags and all(t in st.schema.names for t in st.tags):
            from sqlglot import exp

            cols = ", ".join(exp.to_identifier(t, quoted=True).sql("duckdb") for t in st.tags)
            name = ".".join(
                exp.to_identifier(p, quoted=True).sql("duckdb")
                for p in (st.ident.catalog, st.ident.schema, st.ident.name)
            )
            sql = f'SELECT {cols}, max("time") AS "time" FROM {name} GROUP BY ALL'
            try:
                table = self.lakehouse.sql(sql).to_arrow()
            except MatrixOSError as e:
                log.warning("cannot read the latest points of %s: %s", st.ident, e)
                table = None
            if table is not None and table.num_rows:
                for key, _, hi in _series_spans(table, st.tags):
                    latest[key] = hi
        with st.lock:
            if st.latest is None:
                for entry in st.entries:  # replayed entries (the query above saw them too)
                    for key, _, hi in _series_spans(entry.rows, st.tags):
                        latest[key] = max(latest.get(key, hi), hi)
                st.latest = latest

    # -- replay -----------------------------------------------------------------------------
    def _replay(self) -> None:
        """Points a previous process acknowledged and did not commit become pending again;
        those its commits hold (the Delta transaction of this log) are dropped."""
        records = self.wal.open()
        committed: dict[str, int] = {}
        for rec in records:
            done = committed.get(rec.table)
            if done is None:
                done = committed[rec.table] = self._committed_seq(rec.table)
            if rec.seq <= done:
                continue
            st = self._tables.get(rec.table)
            if st is None:
                ident = TableIdent.parse(rec.table)
                try:
                    info = self.service.catalog.get_table(ident)
                except TableNotFound:
                    log.warning("write-ahead log: table %s is gone; its points dropped", ident)
                    committed[rec.table] = 1 << 62
                    continue
                schema = self.service.store(info).schema(self.service.snapshot(info))
                st = SeriesTable(ident, info, list(rec.meta.get("tags") or []), schema)
                self._tables[rec.table] = st
            st.schema = series.merged_schema(st.schema, rec.data)
            # Replayed points may repeat what a lost commit attempt left: merge them.
            st.entries.append(Entry(rec.seq, rec.data, True))
            self._pending_bytes += rec.data.nbytes
            self._uncommitted += rec.data.num_rows
        if records:
            log.info("write-ahead log: %d record(s) replayed", len(records))

    def _committed_seq(self, table: str) -> int:
        try:
            info = self.service.catalog.get_table(TableIdent.parse(table))
            dt = self.service.snapshot(info)
        except MatrixOSError:
            return -1
        v = dt.transaction_version(self.wal.id)
        return -1 if v is None else int(v)

    # -- what queries see -------------------------------------------------------------------
    def pending_points(self, ident: TableIdent | str) -> pa.Table | None:
        """The acknowledged points of a table not committed yet (the table's columns and
        types; ``None`` when there are none)."""
        st = self._tables.get(str(TableIdent.parse(ident)))
        if st is None:
            return None
        with st.lock:
            rows = [e.rows for e in st.entries if e.version is None]
        if not rows:
            return None
        return pa.concat_tables(rows, promote_options="permissive")

    def _pending_source(self, ident: TableIdent, version: int) -> PendingRows | None:
        st = self._tables.get(str(ident))
        if st is None:
            return None
        with st.lock:  # each entry's state read at one moment: a commit may be ending now
            entries = [e for e in st.entries if e.version is None or e.version > version]
            landing = [e for e in entries if e.committing and e.version is None]
        if landing:
            # A commit under way may be in the version the query reads: its txn says.
            done = self._txn_at(st, version)
            gone = {id(e) for e in landing if e.seq <= done}
            entries = [e for e in entries if id(e) not in gone]
        if not entries:
            return None
        seqs = tuple(e.seq for e in entries)  # an entry's rows never change
        memo = st.pending_memo
        if memo is not None and memo[0] == seqs:
            return memo[1]  # type: ignore[no-any-return]
        table = pa.concat_tables([e.rows for e in entries], promote_options="permissive")
        if any(e.late for e in entries):
            found = PendingRows(series.last_wins(table, st.keys), tuple(st.keys))
        else:
            found = PendingRows(table)
        st.pending_memo = (seqs, found)
        return found

    def _txn_at(self, st: SeriesTable, version: int) -> int:
        """The highest log seq the table's ``version`` holds (-1: none)."""
        try:
            dt = self.service.snapshot(st.info)
            if dt.version() != version:
                dt = self.service.store(st.info).open(version=version)
            done = dt.transaction_version(self.wal.id)
        except MatrixOSError:
            return -1
        return -1 if done is None else int(done)

    # -- the flusher's side (matrixos.iot.flusher) ------------------------------------------
    def tables(self) -> list[SeriesTable]:
        with self._lock:
            return list(self._tables.values())

    def committed(self, st: SeriesTable, entries: Sequence[Entry], version: int) -> None:
        """Mark entries as held by the table's ``version`` (their commit is no longer under
        way), in one step for queries."""
        now = time.monotonic()
        with st.lock:
            for e in entries:
                e.version = version
                e.committed_at = now
                e.committing = False
        with self._lock:
            self._uncommitted -= sum(e.rows.num_rows for e in entries)

    def forget(self, st: SeriesTable, entries: Sequence[Entry]) -> None:
        """Drop entries (committed a while ago, or of a dropped table)."""
        gone = {id(e) for e in entries}
        with st.lock:
            st.entries = [e for e in st.entries if id(e) not in gone]
        with self._lock:
            self._pending_bytes -= sum(e.rows.nbytes for e in entries)
            self._uncommitted -= sum(e.rows.num_rows for e in entries if e.version is None)

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def uncommitted(self) -> int:
        """Points acknowledged and not yet committed."""
        return self._uncommitted

    def flush(self) -> dict[str, Any]:
        """Commit every acknowledged point now (the flusher does it in the background)."""
        return self.flusher.flush_now()


_OPEN: OpenAtExit[IotIngest] = OpenAtExit(lambda i: i.close(), stage=SERVICES)
_ATTACHED: weakref.WeakKeyDictionary[Any, IotIngest] = weakref.WeakKeyDictionary()
_ATTACH_LOCK = threading.Lock()


def ingest_for(lakehouse: Lakehouse, **options: Any) -> IotIngest:
    """The ingest service of ``lakehouse`` in this process, started with ``options`` (see
    ``IotIngest``) on first use: one write-ahead log per warehouse and process, shared by the
    HTTP routes, MQTT and file drops."""
    with _ATTACH_LOCK:
        ingest = _ATTACHED.get(lakehouse)
        if ingest is None:
            ingest = _ATTACHED[lakehouse] = IotIngest(lakehouse, **options)
        return ingest


def close_ingest(lakehouse: Lakehouse) -> None:
    """Stop ``lakehouse``'s ingest service, if one was started (a last flush first)."""
    with _ATTACH_LOCK:
        ingest = _ATTACHED.pop(lakehouse, None)
    if ingest is not None:
        ingest.close()


def _series_spans(rows: pa.Table, tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Each series' (key, first time, last time) in ``rows`` (times in µs)."""
    return _series_spans_and_repeats(rows, tags)[0]


def _series_spans_and_repeats(
    rows: pa.Table, tags: Sequence[str]
) -> tuple[list[tuple[str, int, int]], bool]:
    """Each series' (key, first time, last time) in ``rows`` (times in µs), and whether a
    (series, time) repeats. Sorting codes and times with numpy: a hash aggregate over the tag
    columns cost more than parsing the body."""
    if not rows.num_rows:
        return [], False
    key = series_key(rows, tags)
    if isinstance(key, pa.ChunkedArray):  # one dictionary for all chunks
        key = key.combine_chunks()
    enc = pc.dictionary_encode(key)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    names = enc.dictionary.to_pylist()
    t = pc.cast(rows.column(series.TIME), pa.int64()).to_numpy()
    order = np.lexsort((t, codes))
    c, tt = codes[order], t[order]
    same = c[1:] == c[:-1]
    repeats = bool(np.any(same & (tt[1:] == tt[:-1])))
    starts = np.flatnonzero(np.concatenate([[True], ~same]))
    ends = np.concatenate([starts[1:], [len(c)]]) - 1
    spans = list(
        zip(
            [names[i] for i in c[starts].tolist()],
            tt[starts].tolist(),
            tt[ends].tolist(),
            strict=True,
        )
    )
    return spans, repeats


def series_key(rows: pa.Table, tags: Sequence[str]) -> pa.Array:
    """One string per row naming its series (its tag values; a missing tag differs from any
    value)."""
    absent = pa.array(["\x00"] * rows.num_rows, pa.string())
    cols = [
        pc.fill_null(rows.column(t), "\x00") if t in rows.column_names else absent for t in tags
    ]
    if not cols:
        return pa.array([""] * rows.num_rows, pa.string())
    if len(cols) == 1:
        return cols[0]
    return pc.binary_join_element_wise(*cols, "\x1f")


def default_wal_dir(lakehouse: Lakehouse) -> Path:
    """``<warehouse>/_iot_wal`` for a local warehouse; else a folder under the user's home."""
    wh = lakehouse.warehouse
    if not wh.is_remote:
        root = wh.uri.removeprefix("file://")
        return Path(root) / "_iot_wal"
    import hashlib

    digest = hashlib.sha256(wh.uri.encode()).hexdigest()[:16]
    return Path(lakehouse.settings.home).expanduser() / "iot_wal" / digest


__all__ = [
    "IotIngest",
    "WriteAck",
    "close_ingest",
    "default_wal_dir",
    "ingest_for",
    "series_key",
]
