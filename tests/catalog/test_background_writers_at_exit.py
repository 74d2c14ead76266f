"""A program that ends while MatrixOS writes tables in the background exits cleanly.

A daemon thread still inside deltalake's native code when the interpreter shuts down crashes
the process (SIGSEGV). Usage and audit records are written by such threads (``BatchWriter``),
so every writer still open is closed before the interpreter shuts down, and a job service
stops the meter it made when it is closed. Each test runs a real program in a child process.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import matrixos as mx

# Appends from a background writer in a loop and ends without closing anything: the end
# comes in the middle of a Delta write.
_BUSY = textwrap.dedent(
    """
    import sys, threading, time
    import pyarrow as pa
    import matrixos as mx
    from matrixos.catalog.systables import BatchWriter, SystemTable

    lh = mx.connect(sys.argv[1])
    notes = SystemTable(lh.service, "system.demo.notes", pa.schema([("n", pa.int64())]))
    writer = BatchWriter(notes.append, interval_s=0.001, batch=1)

    def produce():
        n = 0
        while True:
            writer.put({"n": n})
            n += 1
            time.sleep(0.002)

    threading.Thread(target=produce, daemon=True).start()
    time.sleep(float(sys.argv[2]))
    """
)

# Queues rows for a writer that would write them a minute later, and ends at once.
_QUEUED = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    import matrixos as mx
    from matrixos.catalog.systables import BatchWriter, SystemTable

    lh = mx.connect(sys.argv[1])
    notes = SystemTable(lh.service, "system.demo.notes", pa.schema([("n", pa.int64())]))
    writer = BatchWriter(notes.append, interval_s=60)
    writer.put(*({"n": n} for n in range(25)))
    """
)

# Runs a job through the session's job service, closes the session, and lists the threads
# MatrixOS left running.
_JOBS = textwrap.dedent(
    """
    import sys, threading
    import matrixos as mx

    lh = mx.connect(sys.argv[1])
    print(lh.jobs.submit(max, 3, 7).wait(timeout=120))
    lh.close()
    print(sorted(t.name for t in threading.enumerate() if t.name.startswith("mx-")))
    """
)

# Runs a job and ends without closing the session.
_UNCLOSED = textwrap.dedent(
    """
    import sys
    import matrixos as mx

    lh = mx.connect(sys.argv[1])
    print(lh.jobs.submit(max, 3, 7).wait(timeout=120))
    """
)

# Acknowledges points through the session's ingest service (flushed hourly) and ends.
_INGEST = textwrap.dedent(
    """
    import sys
    import matrixos as mx
    from matrixos.iot.ingest import ingest_for

    lh = mx.connect(sys.argv[1])
    ingest = ingest_for(lh, wal_dir=sys.argv[2], flush_interval=3600)
    lines = "\\n".join(f"cpu,host=a v={i}i {(i + 1) * 10**9}" for i in range(100))
    print(ingest.write_lines(lh.principal, "iot.cpu", lines).points)
    """
)

# The same through an ingest service the program built itself (not the session's), neither
# closed: it is closed before the session its last flush writes through.
_OWN_INGEST = textwrap.dedent(
    """
    import sys
    import matrixos as mx
    from matrixos.iot.ingest import IotIngest

    lh = mx.connect(sys.argv[1])
    ingest = IotIngest(lh, sys.argv[2], flush_interval=3600)
    lines = "\\n".join(f"cpu,host=a v={i}i {(i + 1) * 10**9}" for i in range(100))
    print(ingest.write_lines(lh.principal, "iot.cpu", lines).points)
    """
)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def _notes(warehouse: str) -> list[int]:
    with mx.connect(warehouse) as lh:
        return sorted(n for (n,) in lh.sql("SELECT n FROM system.demo.notes").fetchall())


def test_a_program_ending_during_background_delta_writes_exits_cleanly(tmp_path: Path) -> None:
    warehouse = str(tmp_path / "wh")
    said = []  # what each program printed (a batch not written is logged there)
    for run, seconds in enumerate(["0.3", "0.6", "1.0"]):
        done = _run(_BUSY, warehouse, seconds)
        assert done.returncode == 0, (run, done.returncode, done.stderr[-3000:])
        said.append(done.stderr[-3000:])
    rows = _notes(warehouse)
    # Every run wrote what it queued, in order, with no gap: its numbers are 0..k for some k,
    # so together they hold 0 three times and no number more often than the one before it.
    counts = Counter(rows)
    times = [counts[n] for n in range(max(rows, default=-1) + 1)]
    assert times[:1] == [3], times[:10]
    assert all(a >= b for a, b in itertools.pairwise(times)), (times, said)


def test_rows_queued_when_a_program_ends_are_written(tmp_path: Path) -> None:
    warehouse = str(tmp_path / "wh")
    done = _run(_QUEUED, warehouse)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _notes(warehouse) == list(range(25))


def test_closing_a_session_stops_the_meter_its_job_service_made(tmp_path: Path) -> None:
    done = _run(_JOBS, str(tmp_path / "wh"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[:2] == ["SUCCEEDED", "[]"], done.stdout + done.stderr[-2000:]


def test_a_session_left_open_is_closed_at_exit_and_its_usage_written(tmp_path: Path) -> None:
    warehouse = str(tmp_path / "wh")
    done = _run(_UNCLOSED, warehouse)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["SUCCEEDED"], done.stdout + done.stderr[-2000:]
    with mx.connect(warehouse) as lh:
        (rows,) = lh.sql("SELECT count(*) FROM system.billing.usage").fetchone()
    assert rows >= 1


@pytest.mark.parametrize("script", [_INGEST, _OWN_INGEST], ids=["session's", "own"])
def test_points_acknowledged_by_an_ingest_service_left_open_are_committed_at_exit(
    tmp_path: Path, script: str
) -> None:
    warehouse = str(tmp_path / "wh")
    done = _run(script, warehouse, str(tmp_path / "wal"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["100"], done.stdout + done.stderr[-2000:]
    with mx.connect(warehouse) as lh:
        assert lh.table("iot.cpu").version == 1  # made empty, then the exit's flush
        assert lh.sql("SELECT count(*), sum(v) FROM iot.cpu").fetchone() == (100, 4950)
