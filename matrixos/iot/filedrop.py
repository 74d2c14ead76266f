"""File drops: a watched folder (or object-store prefix) of CSV, JSON and line-protocol files,
each ingested once through the write-ahead log.

``matrixos serve --watch /data/drops=iot.readings`` (or ``--watch s3://bucket/drops=…``)

Every ``interval`` seconds the folder is listed; a file whose size and modification time held
still since the previous listing (a writer finished it) and that the manifest does not hold
is read and written like any other points, then recorded in the manifest
(``<wal dir>/filedrops/<hash of the folder>.jsonl``: name, size, mtime). A crash between the
write and the manifest line ingests the file again on restart; its points land on the same
series and times, so last write wins keeps them once.

Formats, by extension: ``.lp``/``.txt`` line protocol; ``.json``/``.ndjson``/``.jsonl``
JSON points (``matrixos.iot.jsonpoints``); ``.csv`` with a header, a ``time`` column (integer
in ``precision`` units or an ISO-8601 text), string columns as tags and the others as fields.
A file that fails is logged and recorded as failed (not retried until it changes).

Example:
    >>> import tempfile, pathlib, matrixos as mx
    >>> from matrixos.iot.ingest import IotIngest
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> drops = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (drops / "a.csv").write_text("time,host,v\\n1,a,0.5\\n")
    >>> with IotIngest(lh) as ingest:
    ...     watcher = FileDropWatcher(ingest, str(drops), "iot.drops", lh.principal, precision="s")
    ...     watcher.scan(), watcher.scan(), watcher.scan()
    (0, 1, 0)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from matrixos.catalog.names import TableIdent
from matrixos.errors import IngestBusy, MatrixOSError, PointsRejected
from matrixos.iot.lineproto import LINE, precision_factor
from matrixos.storage.warehouse import filesystem_for, is_remote

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.iot.ingest import IotIngest

log = logging.getLogger(__name__)
FORMATS = {
    ".lp": "lp",
    ".txt": "lp",
    ".line": "lp",
    ".json": "json",
    ".ndjson": "json",
    ".jsonl": "json",
    ".csv": "csv",
}


class FileDropWatcher:
    """Watches ``location`` and writes its new files into ``table`` as ``principal``."""

    def __init__(
        self,
        ingest: IotIngest,
        location: str,
        table: str,
        principal: Principal,
        *,
        precision: str = "ns",
        interval: float = 2.0,
    ) -> None:
        self.ingest = ingest
        self.location = location.rstrip("/")
        self.table = TableIdent.parse(table)
        self.principal = principal
        self.precision = precision
        self.interval = interval
        self.fs = filesystem_for(location, ingest.lakehouse.warehouse.options)
        digest = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        self.manifest = ingest.wal.directory / "filedrops" / f"{digest}.jsonl"
        self._done: dict[str, tuple[int, float]] = self._read_manifest()
        self._seen: dict[str, tuple[int, float]] = {}  # the previous listing
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.files = 0

    def start(self) -> FileDropWatcher:
        self._thread = threading.Thread(target=self._run, name="iot-filedrop", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception:  # keep watching: a listing can fail for a moment
                log.exception("file drop scan of %s failed", self.location)

    def scan(self) -> int:
        """One pass: ingest the files that are new and settled; returns how many."""
        listing = self._list()
        done = 0
        for name, stamp in sorted(listing.items()):
            if self._done.get(name) == stamp or self._seen.get(name) != stamp:
                continue  # ingested already, or still changing (or first seen now)
            if self._ingest(name):
                done += 1
            self._record(name, stamp)
        self._seen = listing
        return done

    def _list(self) -> dict[str, tuple[int, float]]:
        out: dict[str, tuple[int, float]] = {}
        root = self.location.removeprefix("file://")
        try:
            entries = self.fs.ls(root, detail=True)
        except FileNotFoundError:
            return out
        for e in entries:
            if e.get("type") != "file":
                continue
            name = str(e["name"]).rsplit("/", 1)[-1]
            if name.startswith(".") or Path(name).suffix.lower() not in FORMATS:
                continue
            mtime = e.get("mtime") or e.get("LastModified") or e.get("last_modified") or 0
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            out[name] = (int(e.get("size") or 0), float(mtime))
        return out

    def _ingest(self, name: str) -> bool:
        path = f"{self.location}/{name}"
        root = path if is_remote(path) else path.removeprefix("file://")
        kind = FORMATS[Path(name).suffix.lower()]
        try:
            with self.fs.open(root, "rb") as f:
                data = f.read()
            while True:
                try:
                    self._write(kind, data, path)
                    break
                except IngestBusy as e:
                    if self._stop.wait(e.retry_after):
                        raise
            self.files += 1
            return True
        except IngestBusy:
            raise
        except (MatrixOSError, OSError, ValueError) as e:
            log.warning("file drop %s refused: %s", path, e)
            return False

    def _write(self, kind: str, data: bytes, path: str) -> None:
        if kind == "lp":
            self.ingest.write_lines(
                self.principal, str(self.table), data, self.precision, source=path
            )
            return
        if kind == "json":
            text = data.decode()
            try:
                payload: Any = json.loads(text)
            except ValueError:  # newline-delimited JSON
                payload = [json.loads(line) for line in text.splitlines() if line.strip()]
            self.ingest.write_json(
                self.principal, str(self.table), payload, self.precision, source=path
            )
            return
        points, tags = csv_points(data, self.precision, path)
        self.ingest.write_points(self.principal, self.table, points, tags, source=path)

    def _read_manifest(self) -> dict[str, tuple[int, float]]:
        done: dict[str, tuple[int, float]] = {}
        if self.manifest.exists():
            for line in self.manifest.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line: that file is ingested again (idempotent)
                done[rec["name"]] = (int(rec["size"]), float(rec["mtime"]))
        return done

    def _record(self, name: str, stamp: tuple[int, float]) -> None:
        self.manifest.parent.mkdir(parents=True, exist_ok=True)
        with self.manifest.open("a") as f:
            f.write(json.dumps({"name": name, "size": stamp[0], "mtime": stamp[1]}) + "\n")
        self._done[name] = stamp


def csv_points(data: bytes, precision: str, path: str) -> tuple[pa.Table, list[str]]:
    """A CSV file's rows as points: ``time`` (integer in ``precision`` units, or text), string
    columns as tags, the others as fields."""
    try:
        table = pacsv.read_csv(io.BytesIO(data))
    except pa.ArrowInvalid as e:
        raise PointsRejected(f"not a readable CSV file: {e}", path=path, rejected=[]) from e
    if "time" not in table.column_names:
        raise PointsRejected(
            "the CSV file has no 'time' column", path=path, rejected=[], hint="add a time column"
        )
    t = table.column("time")
    if pa.types.is_integer(t.type):
        ns = pc.multiply(pc.cast(t, pa.int64()), precision_factor(precision))
    else:
        ts = t if pa.types.is_timestamp(t.type) else pc.strptime(t, "%Y-%m-%dT%H:%M:%S", "ns")
        if pa.types.is_timestamp(ts.type) and ts.type.tz is None:  # type: ignore[attr-defined]
            ts = pc.assume_timezone(ts, "UTC")
        ns = pc.cast(pc.cast(ts, pa.timestamp("ns", "UTC")), pa.int64())
    table = table.set_column(table.column_names.index("time"), "time", ns)
    tags = [f.name for f in table.schema if f.name != "time" and pa.types.is_string(f.type)]
    lines = pa.array(range(2, table.num_rows + 2), pa.int32())  # line 1 is the header
    return table.append_column(LINE, lines), tags


__all__ = ["FORMATS", "FileDropWatcher", "csv_points"]
