"""Jobs as gangs on the real 3-node loopback Ray cluster (1 CPU per node; node c has one GPU
advertised as an L4 stand-in): all-or-nothing gangs, no deadlock between big gangs, cancel and
max_runtime releasing everything, a killed worker, preemption, a SIGKILLed scheduler replaced
by another, and a burst of short jobs each run exactly once. After each test no placement group
or actor of its jobs is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import matrixos as mx
from matrixos.compute import ComputePool
from matrixos.errors import JobError
from matrixos.jobs import Jobs, JobService, open_jobs
from matrixos.jobs.runner import job_of, live_job_actors, live_job_groups

try:
    from tests.compute._cluster import RayCluster
    from tests.jobs._fns import first_attempt_hangs, interval
    from tests.jobs._fns import until as _until
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]
    from _fns import first_attempt_hangs, interval  # type: ignore[no-redef]
    from _fns import until as _until  # type: ignore[no-redef]

try:
    from tests.jobs.conftest import GPU_TYPE
except ModuleNotFoundError:
    from conftest import GPU_TYPE  # type: ignore[no-redef]

OPTIONS: dict[str, Any] = {
    "grace_s": 1.0,
    "tick_s": 0.2,
    "meter_interval_s": 1.0,
    "lease_ttl_s": 3.0,
    "policy_options": {"preempt_after_s": 0.0},
}


def _open(lh: mx.Lakehouse, **extra: Any) -> JobService:
    return open_jobs(
        lh.service,
        ray=True,
        connect={"warehouse": lh.settings.warehouse, "compute": "local"},
        **{**OPTIONS, **extra},
    )


@pytest.fixture(scope="module")
def ray_jobs(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[JobService, Jobs]]:
    wh = tmp_path_factory.mktemp("jobs-ray") / "wh"
    with mx.connect(str(wh), compute=ray_cluster.address) as lh:
        svc = _open(lh)
        try:
            yield svc, svc.for_principal(lh.principal)
        finally:
            svc.close()


def _released(svc: JobService, timeout: float = 30.0) -> None:
    """No placement group or actor of the service's jobs is left (within ``timeout``)."""
    ids = {r.id for r in svc.store.list()}

    def leftovers() -> list[str]:
        names = live_job_groups() + live_job_actors()
        return [n for n in names if job_of(n) in ids]

    assert _until(lambda: not leftovers(), timeout), leftovers()


def _intervals(path: Path) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for line in path.read_text().splitlines():
        tag, _rank, start, end = line.split()
        out.setdefault(tag, []).append((float(start), float(end)))
    return out


def _overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    lo_a, hi_a = min(s for s, _ in a), max(e for _, e in a)
    return any(s < hi_a and lo_a < e for s, e in b)


def test_gangs_are_all_or_nothing_and_interleave_with_single_jobs(
    ray_jobs: tuple[JobService, Jobs], tmp_path: Path
) -> None:
    svc, jobs = ray_jobs
    out = tmp_path / "intervals.txt"
    before = [jobs.submit(interval, str(out), f"single{i}", 0.5) for i in range(2)]
    gang = jobs.submit(interval, str(out), "gang", 1.0, nodes=3, strategy="STRICT_SPREAD")
    after = [jobs.submit(interval, str(out), f"single{i}", 0.5) for i in range(2, 4)]
    assert gang.wait(180) == "SUCCEEDED", gang.error
    assert [j.wait(180) for j in before + after] == ["SUCCEEDED"] * 4
    runs = _intervals(out)
    assert len(runs["gang"]) == 3  # one process per bundle
    assert len(set(gang.info().nodes)) == 3  # STRICT_SPREAD: three nodes
    for i in range(4):  # the gang held every CPU: no single job ran beside it
        assert not _overlap(runs["gang"], runs[f"single{i}"])
    logs = gang.logs()  # each rank's output, prefixed
    assert all(f"[rank {r}] gang done" in logs for r in range(3)), logs
    _released(svc)


def test_two_big_gangs_do_not_deadlock(ray_jobs: tuple[JobService, Jobs], tmp_path: Path) -> None:
    svc, jobs = ray_jobs
    out = tmp_path / "intervals.txt"
    a, b = (
        jobs.submit(interval, str(out), tag, 1.0, nodes=2, strategy="STRICT_SPREAD")
        for tag in ("a", "b")
    )
    assert (a.wait(180), b.wait(180)) == ("SUCCEEDED", "SUCCEEDED"), (a.error, b.error)
    runs = _intervals(out)
    assert len(runs["a"]) == len(runs["b"]) == 2
    assert not _overlap(runs["a"], runs["b"])  # 2 + 2 nodes > 3: one after the other
    _released(svc)


def test_cancel_and_max_runtime_release_everything(ray_jobs: tuple[JobService, Jobs]) -> None:
    svc, jobs = ray_jobs
    long = jobs.submit(time.sleep, 120)
    assert _until(lambda: long.status == "RUNNING", 120)
    assert long.cancel() and long.wait(60) == "CANCELED"
    limited = jobs.submit(time.sleep, 120, nodes=2, max_runtime="2s")
    assert limited.wait(120) == "FAILED"
    assert "max_runtime" in (limited.error or "")
    _released(svc)


def test_a_killed_job_process_fails_and_a_lost_worker_reruns_the_job(
    ray_jobs: tuple[JobService, Jobs], tmp_path: Path
) -> None:
    svc, jobs = ray_jobs
    marker = tmp_path / "first"
    job = jobs.submit(first_attempt_hangs, str(marker))
    assert _until(lambda: marker.exists() and marker.read_text().count(" ") == 1, 120)
    pid, _ = map(int, marker.read_text().split())
    os.kill(pid, signal.SIGKILL)  # the job's own process
    assert job.wait(60) == "FAILED"
    assert job.error == "killed by signal SIGKILL" and job.exit_code == -9
    _released(svc)

    marker.unlink()
    job = jobs.submit(first_attempt_hangs, str(marker))
    assert _until(lambda: marker.exists() and marker.read_text().count(" ") == 1, 120)
    pid, supervisor = map(int, marker.read_text().split())
    os.kill(supervisor, signal.SIGKILL)  # the Ray worker that runs it
    assert job.wait(120) == "SUCCEEDED", job.error
    assert job.result() == "again"
    info = job.info()
    assert info.attempts == 2 and "lost" in (info.error or "")
    assert _until(lambda: not _alive(pid), 10)  # the first attempt's process died with it
    _released(svc)


def test_a_higher_priority_gpu_job_preempts_and_the_victim_is_requeued(
    ray_jobs: tuple[JobService, Jobs], tmp_path: Path
) -> None:
    svc, jobs = ray_jobs
    marker = tmp_path / "first"
    low = jobs.submit(
        first_attempt_hangs, str(marker), gpus=1, accelerators=[GPU_TYPE], priority="low"
    )
    assert _until(lambda: marker.exists() and marker.read_text().count(" ") == 1, 120)
    high = jobs.submit(interval, str(tmp_path / "out"), "high", 0.1, gpus=1, priority="high")
    assert high.wait(120) == "SUCCEEDED", high.error
    assert low.wait(120) == "SUCCEEDED", low.error
    info = low.info()
    assert info.attempts == 2 and low.result() == "again"
    assert "preempted" in (info.error or "")
    assert high.info().nodes == low.info().nodes  # the one L4 node
    # metered while it ran: one L4 (121 TFLOPS) and one core (0.1) a second, in degrees
    run = high.info()
    seconds = (run.ended_at or 0) - (run.started_at or 0)
    per_s = (121 + 0.1) / 312 / 3600
    assert 0 < run.degrees <= per_s * (seconds + 1.5)
    _released(svc)


_SCHEDULER = textwrap.dedent(
    """
    import sys, time
    import matrixos as mx
    from matrixos.jobs import open_jobs
    sys.path.insert(0, sys.argv[3])
    from _fns import interval

    warehouse, out, address = sys.argv[1], sys.argv[2], sys.argv[4]
    lh = mx.connect(warehouse, compute=address)
    svc = open_jobs(lh.service, ray=lh.compute.is_ray, connect={"warehouse": warehouse},
                    tick_s=0.2, lease_ttl_s=3.0, grace_s=1.0)
    jobs = svc.for_principal(lh.principal)
    handles = [jobs.submit(interval, out, f"job{i}", 2.0) for i in range(4)]
    while not any(h.status == "RUNNING" for h in handles):
        time.sleep(0.05)
    print("running", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_scheduler_loses_no_job_and_leaks_nothing(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    wh, out = str(tmp_path / "wh"), tmp_path / "intervals.txt"
    mx.connect(wh).close()
    env = {**os.environ, **ray_cluster.env(), "PYTHONPATH": os.pathsep.join(sys.path)}
    here = str(Path(__file__).parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCHEDULER, wh, str(out), here, ray_cluster.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "running", proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with mx.connect(wh, compute=ray_cluster.address) as lh:
        svc = _open(lh)
        try:
            jobs = svc.for_principal(lh.principal)
            handles = [jobs.get(r.id) for r in jobs.list()]
            assert len(handles) == 4
            assert [h.wait(180) for h in handles] == ["SUCCEEDED"] * 4
            done = _intervals(out)
            assert sorted(done) == [f"job{i}" for i in range(4)]
            assert all(len(v) == 1 for v in done.values())  # each finished exactly once
            assert any(h.info().attempts == 2 for h in handles)  # the one that was running
            _released(svc)
        finally:
            svc.close()


@pytest.mark.timeout(900)  # about a second a job on a busy 2-core machine
def test_a_burst_of_short_jobs_each_runs_exactly_once(
    ray_jobs: tuple[JobService, Jobs], tmp_path: Path
) -> None:
    svc, jobs = ray_jobs
    out = tmp_path / "intervals.txt"
    n = 100
    handles = [jobs.submit(interval, str(out), f"j{i}", 0.0, cpus=0.5) for i in range(n)]
    assert [h.wait(600) for h in handles] == ["SUCCEEDED"] * n
    done = _intervals(out)
    assert sorted(done) == sorted(f"j{i}" for i in range(n))
    assert all(len(v) == 1 for v in done.values())
    _released(svc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_reservations_book_a_window_or_say_the_earliest(
    ray_jobs: tuple[JobService, Jobs],
) -> None:
    _, jobs = ray_jobs
    start = time.time() + 3600
    first = jobs.reserve(gpus=1, accelerator=GPU_TYPE, start=start, duration="1h")
    assert (first.gpus, first.accelerator, first.end - first.start) == (1, GPU_TYPE, 3600)
    with pytest.raises(JobError) as e:  # the pool's one L4 is booked then
        jobs.reserve(gpus=1, accelerator=GPU_TYPE, start=start + 600, duration="1h")
    assert e.value.field == "start" and e.value.earliest == pytest.approx(first.end)
    later = jobs.reserve(gpus=1, accelerator=GPU_TYPE, start=e.value.earliest, duration="30m")
    assert [r.id for r in jobs.reservations()] == [first.id, later.id]
    with pytest.raises(JobError) as e:
        jobs.reserve(gpus=2, accelerator=GPU_TYPE, start=start, duration="1h")
    assert e.value.field == "gpus"
