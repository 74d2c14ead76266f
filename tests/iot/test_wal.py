"""The write-ahead log: durable appends grouped into shared fsyncs, segments, replay after a
crash (a torn tail ignored), truncation only of what was committed, and a disk that refuses
writes (nothing acknowledged, clear error, healing once it has room)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from matrixos.errors import IngestBusy
from matrixos.iot.wal import WriteAheadLog, encode


def payload(i: int) -> bytes:
    return encode("iot.t", {"n": i}, pa.table({"v": [float(i)]}))


def test_append_and_replay(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    assert wal.open() == []
    seqs = [wal.append([payload(i)])[0] for i in range(5)]
    wal.close()
    again = WriteAheadLog(tmp_path)
    records = again.open()
    assert [r.seq for r in records] == seqs == [1, 2, 3, 4, 5]
    assert [r.meta["n"] for r in records] == [0, 1, 2, 3, 4]
    assert records[2].data.column("v").to_pylist() == [2.0]
    assert again.id == wal.id and again.id.startswith("matrixos-iot-")
    # New appends go to a new segment and continue the seqs.
    assert again.append([payload(9)]) == [6]
    again.close()


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    seqs: list[int] = []
    lock = threading.Lock()

    def writer() -> None:
        for i in range(25):
            got = wal.append([payload(i)])
            with lock:
                seqs.extend(got)

    threads = [threading.Thread(target=writer) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wal.close()
    assert sorted(seqs) == list(range(1, 401))
    assert wal.syncs < 400  # group commit: many appends per fsync
    assert len(WriteAheadLog(tmp_path).open()) == 400


def test_on_durable_runs_before_rotate_returns(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    seen: list[int] = []
    wal.append([payload(1), payload(2)], seen.extend)
    assert seen == [1, 2]
    assert wal.rotate() == 2
    wal.close()


def test_torn_tail_is_cut_and_never_appended_after(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.append([payload(1)])
    wal.append([payload(2)])
    wal.close()
    seg = wal.segments()[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[:-7])  # a crash in the middle of the second record
    again = WriteAheadLog(tmp_path)
    assert [r.seq for r in again.open()] == [1]
    again.append([payload(3)])
    again.close()
    assert [r.meta["n"] for r in WriteAheadLog(tmp_path).open()] == [1, 3]


def test_truncate_deletes_only_committed_segments_and_keeps_the_seq(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.append([payload(1)])
    first = wal.rotate()
    wal.append([payload(2)])
    second = wal.rotate()
    assert (first, second) == (1, 2)
    assert wal.truncate(first) == 1  # only the segment holding seq 1
    assert [r.seq for r in WriteAheadLog(tmp_path).open()] == [2]
    wal.truncate(second)
    wal.close()
    again = WriteAheadLog(tmp_path)
    assert again.open() == []
    assert again.append([payload(3)]) == [3]  # seqs never restart (Delta txn versions)
    again.close()


def test_a_full_disk_stops_acknowledging(tmp_path: Path) -> None:
    """A real write failure (the file-size limit, EFBIG) in a child process: the append that
    hits it raises IngestBusy naming the log and nothing it held is acknowledged; every
    acknowledged record replays."""
    script = textwrap.dedent(
        f"""
        import resource, signal, sys, json
        import pyarrow as pa
        from matrixos.errors import IngestBusy
        from matrixos.iot.wal import WriteAheadLog, encode
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        wal = WriteAheadLog({str(tmp_path)!r})
        wal.open()
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, hard))
        acked, errors = [], []
        def put(i):
            return wal.append([encode("iot.t", {{"n": i}}, pa.table({{"v": [float(i)] * 20}}))])
        for i in range(100):
            try:
                acked += put(i)
            except IngestBusy as e:
                errors.append(str(e))
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # room again: the log heals
        acked += put(100)
        print(json.dumps({{"acked": acked, "errors": errors[:1], "n_errors": len(errors)}}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    import json

    result = json.loads(out.stdout)
    assert result["n_errors"] > 0 and result["acked"]
    assert "write-ahead log" in result["errors"][0] and "cannot be written" in result["errors"][0]
    replayed = [r.seq for r in WriteAheadLog(tmp_path).open()]
    assert replayed == result["acked"]


def test_closed_log_refuses(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.close()
    with pytest.raises(IngestBusy):
        wal.append([payload(1)])


def test_an_empty_leftover_segment_is_reused_not_truncated(tmp_path: Path) -> None:
    """A process that rotated and then died leaves an empty segment named by the next seq;
    the next process appends to it and truncating committed segments must keep it (the
    name carries the seq: seqs going back would make new points look committed)."""
    wal = WriteAheadLog(tmp_path)
    wal.open()
    wal.append([payload(1)])
    upto = wal.rotate()
    wal.close()  # 1.wal sealed, 2.wal empty
    second = WriteAheadLog(tmp_path)
    assert [r.seq for r in second.open()] == [1]
    second.truncate(upto)  # the replayed record was committed
    second.close()
    third = WriteAheadLog(tmp_path)
    third.open()
    assert third.append([payload(2)]) == [2]
    third.close()
