"""Jobs on this machine (``compute="local"``): the kinds, states, logs, limits, bad requests,
priorities with preemption, reservations, credit, several processes sharing one queue, and
``system.compute.jobs``. Real processes (each job runs in its own), a real catalog database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import matrixos as mx
from matrixos.catalog.access import Principal
from matrixos.errors import AccessDenied, JobError, OutOfCredit
from matrixos.jobs import Jobs, JobService, open_jobs
from matrixos.jobs.runner import LocalPool

BOB = Principal("bob", frozenset(), groups=frozenset({"team-a"}))
EVE = Principal("eve", frozenset())
CPUS = 2  # the local pool's size in these tests, whatever the machine has


def _service(lh: mx.Lakehouse, **options: object) -> JobService:
    opts: dict[str, object] = {
        "grace_s": 1.0,
        "meter_interval_s": 0.5,
        "tick_s": 0.2,
        "lease_ttl_s": 3.0,
    }
    opts.update(options)
    return open_jobs(
        lh.service,
        ray=False,
        pool=LocalPool(cpus=CPUS, gpus=0),
        connect={"warehouse": lh.settings.warehouse, "compute": "local"},
        **opts,  # type: ignore[arg-type]
    )


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[mx.Lakehouse, JobService]]:
    with mx.connect(str(tmp_path / "wh")) as lh:
        lh.accounts.create("team-a", "group")
        lh.accounts.create("bob", "user")
        lh.accounts.create("eve", "user")
        lh.accounts.add_member("team-a", "bob")
        svc = _service(lh)
        try:
            yield lh, svc
        finally:
            svc.close()


def _jobs(env: tuple[mx.Lakehouse, JobService], who: Principal | None = None) -> Jobs:
    lh, svc = env
    return svc.for_principal(who or lh.principal)


def _square(x: int) -> int:
    print(f"squaring {x}")
    return x * x


def _fail() -> None:
    print("about to fail")
    raise ValueError("the job's own error")


def test_kinds_run_with_their_logs_results_and_exit_codes(
    env: tuple[mx.Lakehouse, JobService], tmp_path: Path
) -> None:
    lh, _ = env
    lh.create_table("s.t", [{"v": 1}, {"v": 2}])
    jobs = _jobs(env)
    py = jobs.submit(_square, 7, name="square")
    sql = jobs.submit("SELECT sum(v) AS total FROM s.t")
    script = tmp_path / "work" / "train.py"
    script.parent.mkdir()
    script.write_text(
        "import os, sys\n"
        "print('args', sys.argv[1:], os.environ['GREETING'], os.getcwd())\n"
        "env = os.environ\n"
        "print('rank', env['MATRIXOS_JOB_RANK'], 'of', env['MATRIXOS_JOB_WORLD_SIZE'])\n"
        "sys.exit(int(sys.argv[2]))\n"
    )
    ok = jobs.submit(
        "train.py", "--code", 0, env={"GREETING": "hi"}, working_dir=str(script.parent)
    )
    bad = jobs.submit([str(script), "--code", "3"], env={"GREETING": "x"})
    err = jobs.submit(_fail)
    assert py.wait(60) == "SUCCEEDED" and py.result() == 49 and py.exit_code == 0
    assert "squaring 7" in py.logs()
    assert sql.wait(60) == "SUCCEEDED" and sql.result().to_pylist() == [{"total": 3}]
    assert ok.wait(60) == "SUCCEEDED"
    assert f"args ['--code', '0'] hi {script.parent}" in ok.logs()
    assert "rank 0 of 1" in ok.logs()
    assert bad.wait(60) == "FAILED" and bad.exit_code == 3 and bad.error == "exit status 3"
    assert err.wait(60) == "FAILED" and err.exit_code == 1
    assert err.error == "ValueError: the job's own error"
    assert "about to fail" in err.logs() and "Traceback" in err.logs()
    with pytest.raises(JobError, match="FAILED: ValueError"):
        err.result()
    info = py.info()
    assert info.kind == "python" and info.name == "square" and info.attempts == 1
    # the policy learned how long this kind of job runs here
    assert env[1].scheduler.policy.throughput.observations("python:square", None) == 1
    assert info.started_at is not None and info.ended_at is not None
    assert info.submitted_at <= info.started_at <= info.ended_at
    # a job's processes and temporary folders are gone once it ended
    assert not list(Path("/tmp").glob(f"mx-job-{py.id}-*"))


def test_bad_requests_name_the_field(env: tuple[mx.Lakehouse, JobService]) -> None:
    jobs = _jobs(env)
    cases = [
        ({"gpus": -1}, "gpus"),
        ({"cpus": -2}, "cpus"),
        ({"nodes": 0}, "nodes"),
        ({"gpus": 1, "accelerators": ["H100"]}, "accelerators"),
        ({"cpus": CPUS + 1}, "cpus"),  # larger than any node
        ({"nodes": CPUS + 1}, "nodes"),  # a gang larger than the whole cluster
        ({"priority": "sometimes"}, "priority"),
        ({"max_runtime": "soon"}, "max_runtime"),
        ({"strategy": "RANDOM"}, "strategy"),
        ({"account": "no-such-team"}, "account"),
        ({"max_degrees": -1}, "max_degrees"),
    ]
    for kwargs, field in cases:
        with pytest.raises(JobError) as e:
            jobs.submit(_square, 1, **kwargs)  # type: ignore[arg-type]
        assert e.value.field == field, (kwargs, e.value)
        assert not str(e.value).startswith("job "), str(e.value)
    with pytest.raises(JobError, match="no script at") as e:
        jobs.submit("missing.py")
    assert e.value.field == "target"
    # a group the principal is not a member of
    with pytest.raises(AccessDenied, match="not a member"):
        _jobs(env, EVE).submit(_square, 1, account="team-a")
    assert jobs.list() == []  # nothing was queued


def test_cancel_max_runtime_and_visibility(env: tuple[mx.Lakehouse, JobService]) -> None:
    bob, eve = _jobs(env, BOB), _jobs(env, EVE)
    long = bob.submit(time.sleep, 60, account="team-a")
    limited = eve.submit(time.sleep, 60, max_runtime="1s")
    assert _until(lambda: long.status == "RUNNING")
    assert long.cancel() and long.wait(30) == "CANCELED"
    assert long.info().error == "canceled" and not long.cancel()
    assert limited.wait(30) == "FAILED"
    assert "max_runtime" in (limited.error or "")
    assert limited.exit_code == -15  # SIGTERM, within the grace period
    # each sees their own (and their groups') jobs; an admin sees all
    assert [r.id for r in bob.list()] == [long.id]
    assert [r.id for r in eve.list()] == [limited.id]
    assert {r.id for r in _jobs(env).list()} == {long.id, limited.id}
    with pytest.raises(JobError, match="no job"):
        eve.get(long.id)
    with pytest.raises(JobError, match="no job"):
        eve.cancel(long.id)


def test_queue_positions_and_etas(env: tuple[mx.Lakehouse, JobService]) -> None:
    jobs = _jobs(env)
    first = jobs.submit(time.sleep, 30, cpus=CPUS, max_runtime=60)
    assert _until(lambda: first.status == "RUNNING")
    assert first.position is None and first.eta is None
    waiting = [jobs.submit(_square, i, cpus=CPUS) for i in range(2)]
    assert _until(lambda: [w.position for w in waiting] == [1, 2])
    etas = [w.eta for w in waiting]
    assert etas[0] is not None and etas[1] is not None and etas[0] <= etas[1]
    # the running job's limit bounds when the next one starts
    assert etas[0].timestamp() <= first.info().started_at + 60 + 5  # type: ignore[operator]
    assert first.cancel()
    assert [w.wait(60) for w in waiting] == ["SUCCEEDED", "SUCCEEDED"]
    assert [w.result() for w in waiting] == [0, 1]


def test_reservations_are_refused_with_the_earliest_window(
    env: tuple[mx.Lakehouse, JobService],
) -> None:
    with pytest.raises(JobError) as e:  # this pool has no GPUs
        _jobs(env).reserve(gpus=1, start=time.time() + 60, duration="1h")
    assert e.value.field in ("gpus", "accelerators")


def test_out_of_credit_stops_a_job_and_the_ledger_balances(
    env: tuple[mx.Lakehouse, JobService],
) -> None:
    lh, _ = env
    jobs = _jobs(env, BOB)
    # one CPU core costs 0.1 TFLOPS: 0.1 / 312 / 3600 degrees a second
    per_s = Decimal("0.1") / 312 / 3600
    lh.accounts.credit("team-a", degrees=per_s * 2)
    with pytest.raises(OutOfCredit) as e:  # the cap exceeds the balance
        jobs.submit(time.sleep, 60, account="team-a", max_degrees=1)
    assert e.value.account == "team-a" and e.value.asked == Decimal(1)
    job = jobs.submit(time.sleep, 60, account="team-a")
    assert job.wait(30) == "OUT_OF_CREDIT"
    assert "balance" in (job.error or "")
    summary = lh.accounts.balance("team-a")
    assert summary <= 0
    ledger = lh.accounts.ledger("team-a")
    credits = sum((x.degrees for x in ledger if x.kind == "credit"), Decimal(0))
    charges = sum((x.degrees for x in ledger if x.kind != "credit"), Decimal(0))
    assert credits + charges == summary  # charges are negative: exact, in Decimal
    # each charge is rounded to a nano-degree (the ledger's unit)
    assert float(-charges) == pytest.approx(job.info().degrees, abs=5e-8)
    # no overdraft beyond one metering interval (0.5 s here, plus the grace period of 1 s)
    assert -summary <= per_s * Decimal("2.5")
    with pytest.raises(OutOfCredit):  # a used-up package refuses new jobs
        jobs.submit(_square, 1, account="team-a")


def test_system_compute_jobs_in_sql(env: tuple[mx.Lakehouse, JobService]) -> None:
    lh, _ = env
    done = _jobs(env, BOB).submit(_square, 3, account="team-a")
    other = _jobs(env, EVE).submit(_square, 4)
    assert done.wait(60) == "SUCCEEDED" and other.wait(60) == "SUCCEEDED"
    query = "SELECT id, state, account, exit_code FROM system.compute.jobs ORDER BY id"
    # each principal sees its own jobs and its groups' accounts' jobs; an admin sees all
    assert lh.with_principal(BOB).sql(query).fetchall() == [(done.id, "SUCCEEDED", "team-a", 0)]
    assert [r[0] for r in lh.with_principal(EVE).sql(query).fetchall()] == [other.id]
    assert len(lh.sql(query).fetchall()) == 2
    joined = lh.sql(
        "SELECT j.state, count(*) FROM system.compute.jobs j GROUP BY j.state"
    ).fetchall()
    assert joined == [("SUCCEEDED", 2)]
    with pytest.raises(AccessDenied, match="system view"):
        lh.sql("DELETE FROM system.compute.jobs")


_SUBMITTER = textwrap.dedent(
    """
    import sys, time
    import matrixos as mx
    from matrixos.jobs import open_jobs
    from matrixos.jobs.runner import LocalPool

    def mark(path, tag):
        with open(path, "a") as f:
            f.write(tag + "\\n")

    warehouse, out, me, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with mx.connect(warehouse) as lh:
        svc = open_jobs(lh.service, ray=False, pool=LocalPool(cpus=2, gpus=0),
                        connect={"warehouse": warehouse}, tick_s=0.2, lease_ttl_s=3.0)
        jobs = svc.for_principal(lh.principal)
        handles = [jobs.submit(mark, out, f"{me}-{i}", cpus=0.5) for i in range(n)]
        states = [h.wait(120) for h in handles]
        errors = [h.error for h in handles if h.status != "SUCCEEDED"]
        svc.close()
    print(",".join(states))
    print(errors, file=sys.stderr)
    """
)


def test_submitters_in_several_processes_share_one_queue(tmp_path: Path) -> None:
    warehouse = str(tmp_path / "wh")
    mx.connect(warehouse).close()
    out = tmp_path / "marks.txt"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SUBMITTER, warehouse, str(out), f"p{p}", "8"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for p in range(3)
    ]
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        assert stdout.strip().split(",") == ["SUCCEEDED"] * 8, stderr[-2000:]
    marks = out.read_text().split()
    assert sorted(marks) == sorted(f"p{p}-{i}" for p in range(3) for i in range(8))


def _until(check: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False
