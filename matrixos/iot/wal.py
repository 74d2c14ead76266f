"""The write-ahead log of IoT ingest: points are durable on local disk before they are
acknowledged, and committed to their Delta tables later, in micro-batches.

Layout: a folder of segments ``<first seq, 20 digits>.wal``; a segment is a run of records
``magic | payload length | crc32 | seq | payload``. The payload is the target table, its
metadata (JSON) and the points as an Arrow IPC stream. Appends from many threads are grouped:
one writer thread writes every record queued since its last write and fsyncs once for all of
them (a group commit), then runs each record's ``on_durable`` callback and wakes the
appenders — so an acknowledgement always follows the fsync of its points.

The flusher (``matrixos.iot.flusher``) ``rotate()``s the log (records up to the returned seq are
in sealed segments), commits them, and ``truncate()``s the segments it committed. ``open()``
reads what a crash left behind (a torn last record ends its segment) and always starts a new
segment, so nothing is ever appended after a torn tail.

Queries see the points between acknowledgement and commit through the ingest service's
``pending_points(table)`` (``matrixos.iot.ingest.IotIngest``), registered with the table
service as a pending source (``matrixos.catalog.pending``).

Example:
    >>> import tempfile, pyarrow as pa
    >>> wal = WriteAheadLog(tempfile.mkdtemp())
    >>> wal.open()
    []
    >>> wal.append([encode("iot.t", {}, pa.table({"v": [1.0]}))])
    [1]
    >>> wal.close()
    >>> [(r.seq, r.table, r.data.num_rows) for r in WriteAheadLog(wal.directory).open()]
    [(1, 'iot.t', 1)]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc

from matrixos.errors import IngestBusy, StorageError

log = logging.getLogger(__name__)

MAGIC = b"MXW1"
_HEADER = struct.Struct("<4sIIQ")  # magic, payload length, crc32 of the payload, seq
_META = struct.Struct("<I")
SUFFIX = ".wal"


@dataclass
class Record:
    """One record read back from the log."""

    seq: int
    table: str
    meta: dict[str, Any]
    data: pa.Table


def encode(table: str, meta: dict[str, Any], data: pa.Table) -> bytes:
    """A record's payload: the table name, its metadata and the points."""
    head = json.dumps({"table": table, **meta}, separators=(",", ":")).encode()
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, data.schema) as writer:
        writer.write_table(data)
    return _META.pack(len(head)) + head + sink.getvalue().to_pybytes()


def decode(seq: int, payload: bytes) -> Record:
    (n,) = _META.unpack_from(payload)
    meta = json.loads(payload[_META.size : _META.size + n])
    data = ipc.open_stream(pa.py_buffer(payload[_META.size + n :])).read_all()
    return Record(seq, meta.pop("table"), meta, data)


@dataclass
class _Group:
    """Records one fsync makes durable together."""

    chunks: list[bytes] = field(default_factory=list)
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    last_seq: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class WriteAheadLog:
    """The log in ``directory``: ``open()`` (replay), ``append()`` (durable on return),
    ``rotate()`` / ``truncate()`` (the flusher's), ``close()``.

    ``segment_bytes``: a segment is sealed once it is this large (the flusher also seals one
    per flush). ``fsync=False`` only for benchmarks that measure what the fsync costs.
    """

    def __init__(
        self, directory: str | Path, *, segment_bytes: int = 64 << 20, fsync: bool = True
    ) -> None:
        self.directory = Path(directory).expanduser()
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.id = ""  # this log's id: the Delta transaction application id of its commits
        self._cond = threading.Condition()
        self._io = threading.Lock()  # held while a group is written and fsynced
        self._group = _Group()
        self._next_seq = 1
        self._file: Any = None
        self._segment: Path | None = None
        self._segment_size = 0
        self._sealed: dict[Path, int] = {}  # sealed segment → its last seq
        self._active_last = 0
        self._broken: BaseException | None = None
        self._closed = False
        self._writer: threading.Thread | None = None
        self.syncs = 0  # group commits (fsyncs) so far

    # -- opening and replay -----------------------------------------------------------------
    def open(self) -> list[Record]:
        """Create or reopen the log; the records a previous process left (in seq order)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            id_file = self.directory / "wal.id"
            if not id_file.exists():
                tmp = id_file.with_suffix(".tmp")
                tmp.write_text(f"matrixos-iot-{uuid.uuid4().hex}")
                os.replace(tmp, id_file)
            self.id = id_file.read_text().strip()
        except OSError as e:
            raise _storage_error(e, self.directory, "open the write-ahead log") from e
        records: list[Record] = []
        next_seq = 1
        for path in self.segments():
            first = int(path.stem)
            next_seq = max(next_seq, first)
            last = first - 1
            found, good = _read_segment(path)
            if good < path.stat().st_size:  # a torn tail: cut it, so appends never follow it
                with open(path, "r+b") as f:
                    f.truncate(good)
            for rec in found:
                records.append(rec)
                last = max(last, rec.seq)
            next_seq = max(next_seq, last + 1)
            self._sealed[path] = last
        with contextlib.suppress(OSError, ValueError):  # seqs never go back, even when
            # every segment was truncated (the names carry the seq too)
            next_seq = max(next_seq, int((self.directory / "wal.seq").read_text()) + 1)
        self._next_seq = next_seq
        self._start_segment()
        self._writer = threading.Thread(target=self._write_loop, name="iot-wal", daemon=True)
        self._writer.start()
        return sorted(records, key=lambda r: r.seq)

    def segments(self) -> list[Path]:
        """The segment files, oldest first."""
        return sorted(p for p in self.directory.glob("*" + SUFFIX) if p.stem.isdigit())

    def _start_segment(self) -> None:
        path = self.directory / f"{self._next_seq:020d}{SUFFIX}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self.fsync:  # the new file's name is durable too
                _fsync_dir(self.directory)
        except OSError as e:
            raise _storage_error(e, path, "start a write-ahead log segment") from e
        self._file = fd
        self._segment = path
        # An empty segment left by a previous process may carry this name: it is the active
        # one now and must never be truncated as a sealed one (its name keeps the seq).
        self._sealed.pop(path, None)
        self._segment_size = 0
        self._active_last = self._next_seq - 1

    # -- appending --------------------------------------------------------------------------
    def append(
        self, payloads: Sequence[bytes], on_durable: Callable[[list[int]], None] | None = None
    ) -> list[int]:
        """Append records (``encode``'s payloads); returns their seqs once they are fsynced.

        ``on_durable(seqs)`` runs after the fsync, before any later ``rotate()`` returns (the
        ingest service makes the points visible there). Raises ``IngestBusy`` when the log
        cannot be written (disk full, read-only): nothing of these records is acknowledged.
        """
        with self._cond:
            if self._closed:
                raise IngestBusy("the write-ahead log is closed", retry_after=1.0)
            group = self._group
            seqs = list(range(self._next_seq, self._next_seq + len(payloads)))
            self._next_seq += len(payloads)
            for seq, payload in zip(seqs, payloads, strict=True):
                header = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload), seq)
                group.chunks.append(header)
                group.chunks.append(payload)
            if on_durable is not None:
                group.callbacks.append(lambda: on_durable(seqs))
            group.last_seq = seqs[-1] if seqs else group.last_seq
            self._cond.notify_all()
        group.done.wait()
        if group.error is not None:
            raise IngestBusy(
                f"points not acknowledged: the write-ahead log at {self.directory} cannot be "
                f"written ({group.error})",
                retry_after=5.0,
                storage_failure=True,
                hint="free disk space or make the log's folder writable (--wal-dir); points "
                "already acknowledged are safe",
            ) from group.error
        return seqs

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._group.chunks and not self._closed:
                    self._cond.wait()
                if not self._group.chunks and self._closed:
                    return
                group, self._group = self._group, _Group()
            with self._io:
                self._write_group(group)
            group.done.set()

    def _write_group(self, group: _Group) -> None:
        data = b"".join(group.chunks)
        try:
            if self._broken is not None or self._file is None:
                self._reopen()
            written = 0
            view = memoryview(data)
            while written < len(data):
                written += os.write(self._file, view[written:])
            if self.fsync:
                os.fsync(self._file)
            self.syncs += 1
        except OSError as e:
            log.error("write-ahead log write failed: %s", e)
            group.error = e
            self._broken = e
            self._abandon_segment()
            return
        self._segment_size += len(data)
        self._active_last = group.last_seq
        for cb in group.callbacks:
            try:
                cb()
            except Exception:  # a callback's failure must not lose the other groups
                log.exception("write-ahead log callback failed")
        if self._segment_size >= self.segment_bytes:
            self._seal()

    def _abandon_segment(self) -> None:
        """After a failed write the segment's tail may be torn: seal it where it was good and
        write the next group to a new segment."""
        if self._file is not None and self._segment is not None:
            # (replay stops at a torn record anyway, should this fail too)
            with contextlib.suppress(OSError):
                os.ftruncate(self._file, self._segment_size)
            with contextlib.suppress(OSError):
                os.close(self._file)
            self._sealed[self._segment] = self._active_last
        self._file = None

    def _reopen(self) -> None:
        self._file = None
        self._start_segment()

    def _seal(self) -> None:
        if self._segment is None:
            return
        os.close(self._file)
        self._sealed[self._segment] = self._active_last
        self._start_segment()

    # -- the flusher's side -----------------------------------------------------------------
    def rotate(self) -> int:
        """Seal the active segment; returns the last seq in sealed segments (every record up
        to it is durable and its ``on_durable`` ran)."""
        with self._io:
            if self._segment_size and self._file is not None:
                try:
                    self._seal()
                except OSError as e:
                    self._broken = e
                    self._file = None
            upto = max(self._sealed.values(), default=self._active_last)
            try:
                tmp = self.directory / "wal.seq.tmp"
                tmp.write_text(str(max(upto, self._active_last)))
                os.replace(tmp, self.directory / "wal.seq")
            except OSError as e:  # the segment names still carry the seq
                log.warning("cannot record the write-ahead log's seq: %s", e)
            return upto

    def truncate(self, upto: int) -> int:
        """Delete the sealed segments whose records all have seq ≤ ``upto`` (committed);
        returns how many were deleted."""
        with self._io:
            gone = [p for p, last in self._sealed.items() if last <= upto]
            for p in gone:
                try:
                    p.unlink(missing_ok=True)
                except OSError as e:
                    log.warning("cannot delete write-ahead log segment %s: %s", p, e)
                    continue
                del self._sealed[p]
            return len(gone)

    @property
    def backlog_bytes(self) -> int:
        """Bytes in segments not yet truncated (committed points wait for their truncation)."""
        total = self._segment_size
        for p in list(self._sealed):
            with contextlib.suppress(OSError):
                total += p.stat().st_size
        return total

    def close(self) -> None:
        """Finish the queued appends and close the files (the segments stay for replay)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._writer is not None:
            self._writer.join()
        with self._io:
            if self._file is not None:
                with contextlib.suppress(OSError):
                    os.close(self._file)
                self._file = None


def _read_segment(path: Path) -> tuple[list[Record], int]:
    """The intact records of a segment and the length they span; reading stops at the first
    torn or corrupt record."""
    out: list[Record] = []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _storage_error(e, path, "read a write-ahead log segment") from e
    pos = 0
    while pos + _HEADER.size <= len(data):
        magic, length, crc, seq = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        payload = data[start : start + length]
        if magic != MAGIC or len(payload) < length or zlib.crc32(payload) != crc:
            log.warning("write-ahead log %s: torn record at byte %d; ignoring the rest", path, pos)
            break
        out.append(decode(seq, payload))
        pos = start + length
    return out, pos


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(e: OSError, where: Path, what: str) -> StorageError:
    return StorageError(
        f"cannot {what} at {where}: {e.strerror or e}",
        operation=what,
        location=str(where),
        detail=str(e),
        hint="the write-ahead log needs a writable local folder with free space (--wal-dir)",
    )


__all__ = ["MAGIC", "SUFFIX", "Record", "WriteAheadLog", "decode", "encode"]
