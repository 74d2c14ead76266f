"""File drops: CSV, JSON and line-protocol files in a watched folder, each ingested once
(the manifest survives a restart), a file still being written waits, a bad file is skipped."""

from __future__ import annotations

import json
from pathlib import Path

import matrixos as mx
from matrixos.iot.filedrop import FileDropWatcher
from matrixos.iot.ingest import IotIngest

WAREHOUSES = ("local",)


def watcher(ingest: IotIngest, lh: mx.Lakehouse, drops: Path) -> FileDropWatcher:
    return FileDropWatcher(ingest, str(drops), "iot.drops", lh.principal, precision="s")


def test_each_file_once_across_restarts(lh: mx.Lakehouse, tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    (drops / "a.csv").write_text("time,host,temp\n1,a,20.5\n2,b,21.0\n")
    (drops / "b.lp").write_text("drops,host=c temp=22.5 3\n")
    (drops / "c.ndjson").write_text(
        json.dumps({"host": "d", "temp": 23.5, "time": 4})
        + "\n"
        + json.dumps({"host": "e", "temp": 1.0, "time": 5})
    )
    (drops / "ignored.bin").write_bytes(b"\x00")
    wal = tmp_path / "wal"
    with IotIngest(lh, wal, flush_interval=3600) as ingest:
        w = watcher(ingest, lh, drops)
        assert w.scan() == 0  # first sight: a file may still be growing
        assert w.scan() == 3
        assert w.scan() == 0
        got = lh.sql("SELECT host, temp FROM iot.drops ORDER BY time").fetchall()
        assert got == [("a", 20.5), ("b", 21.0), ("c", 22.5), ("d", 23.5), ("e", 1.0)]
    with IotIngest(lh, wal, flush_interval=3600) as ingest:  # a restart: the manifest holds
        w = watcher(ingest, lh, drops)
        (drops / "d.csv").write_text("time,host,temp\n6,f,9.5\n")
        w.scan()
        assert w.scan() == 1  # only the new file
        assert lh.sql("SELECT count(*) FROM iot.drops").fetchall() == [(6,)]


def test_a_growing_file_waits_and_a_bad_file_is_skipped(lh: mx.Lakehouse, tmp_path: Path) -> None:
    drops = tmp_path / "drops"
    drops.mkdir()
    with IotIngest(lh, tmp_path / "wal", flush_interval=3600) as ingest:
        w = watcher(ingest, lh, drops)
        (drops / "g.csv").write_text("time,host,temp\n1,a,1.5\n")
        (drops / "bad.lp").write_text("drops,host=x temp=notanumber 1\n")
        w.scan()
        with (drops / "g.csv").open("a") as f:  # still being written
            f.write("2,a,2.5\n")
        assert w.scan() == 0  # g.csv changed since the last listing; bad.lp refused
        assert w.scan() == 1
        assert lh.sql("SELECT count(*) FROM iot.drops").fetchall() == [(2,)]
        assert w.scan() == 0  # the bad file is not retried until it changes
