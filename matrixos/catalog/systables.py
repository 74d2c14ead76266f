"""The platform's own Delta tables (``system.access.audit``, ``system.billing.usage``): made on
first use, owned by ``system``, appended to in batches.

``SystemTable`` appends rows to one such table, creating it the first time. ``BatchWriter``
queues items and a background thread hands them to a write function together every
``interval_s`` seconds (or once ``batch`` are waiting): a server that logs many events a second
makes one Delta commit per interval, not one per event. ``flush()`` writes what is queued now;
``close()`` writes the rest and stops the thread. A writer still open when the program ends
is closed before the interpreter shuts down (``matrixos._exit``): its queue is written, and its
thread is never left inside a Delta write, which crashes the process.

Example:
    >>> import tempfile, matrixos as mx, pyarrow as pa
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> notes = SystemTable(lh.service, "system.demo.notes", pa.schema([("text", pa.string())]))
    >>> writer = BatchWriter(notes.append, interval_s=60)
    >>> writer.put({"text": "hello"})
    >>> writer.flush()
    >>> lh.sql("SELECT text FROM system.demo.notes").fetchall()
    [('hello',)]
    >>> writer.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pyarrow as pa

from matrixos._exit import WRITERS, OpenAtExit
from matrixos.catalog.access import Principal
from matrixos.errors import AccessDenied, TableExists

if TYPE_CHECKING:
    from matrixos.catalog.service import TableHandle, TableService

log = logging.getLogger(__name__)

#: The owner of the system tables: no account may take its name (``Accounts.create``).
SYSTEM = Principal("system")

T = TypeVar("T")
#: How long a writer waits for another process that is making the same system table.
CREATE_WAIT_S = 30.0
#: How long the program's end waits for each writer still open to write its queue.
EXIT_WAIT_S = 60.0


class SystemTable:
    """Appends rows to the system table ``name`` (created with ``schema`` on first use).
    Thread-safe."""

    def __init__(
        self,
        service: TableService,
        name: str,
        schema: pa.Schema,
        *,
        partition_by: Sequence[str] | None = None,
    ) -> None:
        self.service = service
        self.name = name
        self.schema = schema
        self.partition_by = list(partition_by) if partition_by else None
        self._lock = threading.Lock()
        self._ready = False

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` (dicts by column name) in one commit; raises ``MatrixOSError``."""
        if rows:
            self.handle().append(pa.Table.from_pylist(list(rows), schema=self.schema))

    def merge_new(self, rows: Sequence[Mapping[str, Any]], on: Sequence[str]) -> None:
        """Insert those of ``rows`` whose ``on`` columns match no row yet, in one commit."""
        if rows:
            data = pa.Table.from_pylist(list(rows), schema=self.schema)
            self.handle().merge(data, on, when_matched="ignore")

    def handle(self) -> TableHandle:
        """The table (made now if it is not there yet)."""
        with self._lock:
            if not self._ready:
                self._make()
                self._ready = True
        handle = self.service.table(SYSTEM, self.name)
        if handle.info.owner != SYSTEM.name:
            # Someone made a table of this name first: it must not receive the platform's rows.
            raise AccessDenied(
                f"{self.name} is owned by {handle.info.owner}, not by the platform",
                hint=f"an admin should drop it (DROP TABLE {self.name}); it is made again",
            )
        return handle

    def _make(self) -> None:
        # Several processes may make the table at once: the catalog entry goes first, then the
        # files, so a loser can see an entry whose files are not written yet (TableExists
        # "being created"). It waits for the winner rather than failing its rows.
        deadline = time.monotonic() + CREATE_WAIT_S
        pause = 0.02
        while True:
            try:
                self.service.create_table(
                    SYSTEM, self.name, schema=self.schema, partition_by=self.partition_by,
                    mode="ignore",
                )  # fmt: skip
                return
            except TableExists:
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)


class BatchWriter(Generic[T]):
    """Queues items and passes them to ``write`` in batches from a background thread.

    ``write`` failing is logged (``what`` names the items) and the batch tried again, ahead of
    newer items, up to ``ATTEMPTS`` times with a growing pause (a transient failure, such as a
    write racing a session's close, must not leave a gap in a log); then it is dropped: a
    writer serves a log (audit, usage) that must never stop the caller.
    """

    ATTEMPTS = 5

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        interval_s: float = 1.0,
        batch: int = 1000,
        what: str = "rows",
    ) -> None:
        self._write = write
        self._interval = interval_s
        self._batch = batch
        self._what = what
        self._items: list[T] = []
        self._cond = threading.Condition()
        self._closed = False
        self._flushes = 0  # flush() calls asked for
        self._flushed = 0  # flush() calls whose items are written
        self._thread = threading.Thread(target=self._run, name=f"mx-{what}", daemon=True)
        self._thread.start()
        _OPEN.add(self)

    def put(self, *items: T) -> None:
        """Queue ``items`` (written within ``interval_s``)."""
        with self._cond:
            self._items.extend(items)
            if len(self._items) >= self._batch:
                self._cond.notify_all()

    def flush(self) -> None:
        """Write everything queued so far before returning."""
        with self._cond:
            if self._closed:
                return
            self._flushes += 1
            ticket = self._flushes
            self._cond.notify_all()
            while self._flushed < ticket and self._thread.is_alive():
                self._cond.wait(0.5)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued and stop the thread (waiting at most ``timeout`` seconds)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        _OPEN.discard(self)

    def _run(self) -> None:
        failures = 0  # of the batch at the head of the queue
        while True:
            with self._cond:
                idle = not self._closed and self._flushed == self._flushes
                if idle and len(self._items) < self._batch:
                    self._cond.wait(self._interval)
                items, self._items = self._items, []
                ticket, closed = self._flushes, self._closed
            if items:
                try:
                    self._write(items)
                    failures = 0
                except Exception:  # a log must never take its caller down
                    failures += 1
                    if failures < self.ATTEMPTS:
                        log.warning(
                            "%d %s not written (attempt %d of %d)",
                            len(items), self._what, failures, self.ATTEMPTS, exc_info=True,
                        )  # fmt: skip
                        with self._cond:
                            self._items[:0] = items  # first again: the order is kept
                        time.sleep(min(0.05 * 2**failures, 1.0))
                        continue
                    log.exception("%d %s not written", len(items), self._what)
                    failures = 0
            with self._cond:
                self._flushed = ticket
                self._cond.notify_all()
                if closed and not self._items:
                    return


_OPEN: OpenAtExit[BatchWriter[Any]] = OpenAtExit(lambda w: w.close(EXIT_WAIT_S), stage=WRITERS)
