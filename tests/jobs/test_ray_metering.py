"""Metering and failures on the real 3-node loopback Ray cluster.

A SQL statement run as Ray tasks is billed for its workers' cores (each task's reserved CPUs x
wall time, or its measured CPU time when more), per node, beside the driver's own record; a Ray
job whose account reaches zero is stopped within one metering interval, the ledger exact; a
gang one of whose nodes dies (every process of that ``ray start`` SIGKILLed) is stopped whole,
requeued, and restarted whole once a node can host it again, leaving nothing behind. The tests
that kill a node start nodes of their own (other loopback addresses), so the shared cluster's
nodes stay up for the other tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos._ray_nodes import session_pids, start_node, stop_sessions
from matrixos.cluster.services import process_gone
from matrixos.compute import ComputePool, free_port, node_env, ray_start_command
from matrixos.jobs import Jobs, JobService, open_jobs
from matrixos.jobs.runner import job_of, live_job_actors, live_job_groups

try:
    from tests.compute._cluster import RayCluster
    from tests.jobs._fns import rank_waits
    from tests.jobs._fns import until as _until
    from tests.jobs.conftest import GPU_TYPE
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]
    from _fns import rank_waits  # type: ignore[no-redef]
    from _fns import until as _until  # type: ignore[no-redef]
    from conftest import GPU_TYPE  # type: ignore[no-redef]

RAY_NODES = {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
QUERY = "SELECT k % 7 AS g, count(*) AS n, sum(hash(v)) % 1000 AS h FROM t GROUP BY g ORDER BY g"


def test_a_statement_on_the_ray_pool_is_billed_for_its_workers_cores(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    table = tmp_path / "degrees.json"
    table.write_text('{"CPU": 312}')  # a core-second is 1/3600 degree: visible amounts
    settings: dict[str, Any] = {
        "meter_statements": True,
        "duckdb_threads": 1,
        "degree_table": str(table),
    }
    with mx.connect(str(tmp_path / "wh"), compute=ray_cluster.address, **settings) as lh:
        for part in range(4):  # four files: four fragments
            rows = pa.table({"k": range(part * 50_000, (part + 1) * 50_000)})
            rows = rows.append_column("v", pa.array([f"row-{i}" for i in rows["k"].to_pylist()]))
            if part == 0:
                lh.create_table("t", rows)
            else:
                lh.table("t").append(rows)
        expected = lh.sql(QUERY, engine="local").to_arrow()
        t0 = time.time()
        got = lh.sql(QUERY, engine="ray").to_arrow()
        wall = time.time() - t0
        assert got.equals(expected)
        lh.usage()  # writes what is queued
        balance = lh.accounts.balance(lh.principal.name)
        records = lh.sql(
            "SELECT statement_id, node, quantity * seconds AS core_s, degrees, "
            'epoch(start) AS s, epoch("end") AS e FROM system.billing.usage'
        ).to_pylist()
    ids = {r["statement_id"] for r in records}
    # The Ray statement is the one with records on Ray nodes; each node one record.
    on_ray = [r for r in records if r["node"] in RAY_NODES]
    assert on_ray, records
    (sid,) = {r["statement_id"] for r in on_ray}
    mine = [r for r in records if r["statement_id"] == sid]
    assert len({r["node"] for r in on_ray}) == len(on_ray)
    assert {r["node"] for r in mine} - RAY_NODES == {socket.gethostname()}  # the driver's own
    for r in on_ray:
        # One CPU per node and one task at a time there: at most the statement's wall time
        # (plus what DuckDB's one thread and the worker's own threads spent beside it).
        assert 0 < r["core_s"] <= 2 * wall + 0.5, (r, wall)
        assert t0 - 1 <= r["s"] <= r["e"] <= t0 + wall + 1
    assert len(ids) == 2  # the local run was metered too, on the driver only
    # The ledger: every record's degrees charged, nothing else.
    total = sum((Decimal(str(r["degrees"])) for r in records), Decimal(0))
    assert total > 0 and balance == -total
    for r in records:
        assert float(r["degrees"]) == pytest.approx(r["core_s"] / 3600, abs=1e-8)


# -- jobs ---------------------------------------------------------------------------------------
METER_S, GRACE_S = 1.0, 1.0
_RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def env(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[mx.Lakehouse, JobService, Jobs]]:
    wh = tmp_path_factory.mktemp("jobs-ray-meter") / "wh"
    with mx.connect(str(wh), compute=ray_cluster.address) as lh:
        svc = open_jobs(
            lh.service,
            ray=True,
            connect={"warehouse": lh.settings.warehouse, "compute": "local"},
            grace_s=GRACE_S,
            tick_s=0.2,
            meter_interval_s=METER_S,
            lease_ttl_s=3.0,
        )
        try:
            yield lh, svc, svc.for_principal(lh.principal)
        finally:
            svc.close()


def _leftovers(svc: JobService) -> list[str]:
    ids = {r.id for r in svc.store.list()}
    return [n for n in live_job_groups() + live_job_actors() if job_of(n) in ids]


def test_a_ray_job_out_of_credit_is_stopped_within_one_interval(
    env: tuple[mx.Lakehouse, JobService, Jobs],
) -> None:
    lh, svc, jobs = env
    lh.accounts.create("team-r", "group")
    # One L4 (121 TFLOPS) and one core (0.1) a second, in degrees; credit for about 3 s.
    per_s = (Decimal(121) + Decimal("0.1")) / 312 / 3600
    lh.accounts.credit("team-r", degrees=per_s * 3)
    job = jobs.submit(time.sleep, 120, gpus=1, accelerators=[GPU_TYPE], account="team-r")
    assert job.wait(180) == "OUT_OF_CREDIT", job.error
    info = job.info()
    assert "balance" in (info.error or "")
    balance = lh.accounts.balance("team-r")
    ledger = lh.accounts.ledger("team-r")
    credits = sum((x.degrees for x in ledger if x.kind == "credit"), Decimal(0))
    charges = sum((x.degrees for x in ledger if x.kind != "credit"), Decimal(0))
    assert credits + charges == balance  # exact, in Decimal
    assert float(-charges) == pytest.approx(info.degrees, abs=5e-8)
    # Stopped at the first metering after the balance reached zero: no overdraft beyond one
    # interval, plus the grace period the job's SIGTERM gives it (sleep exits at once).
    assert balance <= 0
    assert -balance <= per_s * Decimal(str(METER_S + GRACE_S + 0.5)), (balance, per_s)
    ran = (info.ended_at or 0) - (info.started_at or 0)
    assert 2.0 <= ran <= 3 + METER_S + GRACE_S + 0.5 + 5, ran  # + the last poll on Ray
    assert _until(lambda: not _leftovers(svc), 30), _leftovers(svc)


class _Node:
    """A Ray worker node of this test's own on a loopback address, joined to the shared
    cluster with one CPU and one GPU advertised as the L4 stand-in."""

    def __init__(self, cluster: RayCluster, ip: str) -> None:
        import ray

        self.ip = ip
        self.temp_dir = tempfile.mkdtemp(prefix="mxnk-", dir="/tmp")  # short socket paths
        envs = {**os.environ, **node_env(cluster.token_file), "RAY_scheduler_avoid_gpu_nodes": "0"}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            envs.pop(name, None)
        ports = {
            name: free_port(ip)
            for name in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "metrics-export-port",
                "runtime-env-agent-port",
            )
        }
        args = ray_start_command(
            head=False,
            node_ip=ip,
            address=cluster.address,
            num_cpus=1,
            num_gpus=1,
            zone="x",
            temp_dir=self.temp_dir,
            object_store_memory=96 * 1024 * 1024,
            resources={f"accelerator_type:{GPU_TYPE}": 1},
            block=True,
            ports=ports,
            ray=_RAY,
        )
        self.pid = start_node(
            args, envs, self.temp_dir, head=False, node_ip=ip, address=cluster.address
        ).pid  # `ray start --block`, leader of the node's session
        self.id = ""

        def joined() -> bool:
            for n in ray.nodes():
                if n.get("Alive") and n.get("NodeManagerAddress") == ip:
                    self.id = n["NodeID"]
            return bool(self.id)

        if not _until(joined, 120):
            self.stop()
            raise RuntimeError(f"the node {ip} did not join the cluster")

    def kill(self) -> None:
        """The whole node dies at once: SIGKILL to every process of its session."""
        for pid in session_pids(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert _until(lambda: not session_pids(self.pid), 30)

    def stop(self) -> None:
        stop_sessions([self.pid])
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.mark.timeout(600)
def test_a_gang_whose_node_dies_is_stopped_whole_and_restarted_whole(
    env: tuple[mx.Lakehouse, JobService, Jobs], ray_cluster: RayCluster, tmp_path: Path
) -> None:
    _, svc, jobs = env
    doomed = _Node(ray_cluster, "127.0.0.7")
    spare: _Node | None = None
    try:
        ranks = tmp_path / "ranks"
        ranks.mkdir()
        # Two L4 bundles on two nodes: the shared cluster's L4 node and this test's own.
        job = jobs.submit(
            rank_waits,
            str(ranks),
            nodes=2,
            gpus=1,
            cpus=0.25,
            accelerators=[GPU_TYPE],
            strategy="STRICT_SPREAD",
        )
        assert _until(lambda: len(list(ranks.iterdir())) == 2, 240), job.info()
        first = {int(p.name.split("-")[1]): p.read_text() for p in ranks.iterdir()}
        assert doomed.id in first.values() and job.status == "RUNNING"
        (survivor,) = [pid for pid, node in first.items() if node != doomed.id]
        assert not process_gone(survivor)
        (ranks / "go").write_text("")  # the next attempt returns at once
        doomed.kill()
        # The rank on the surviving node is stopped, not left running half a gang; the job
        # goes back to the queue (no second L4 node now: it waits, holding nothing).
        assert _until(lambda: process_gone(survivor), 120), job.info()
        assert _until(lambda: job.status == "QUEUED", 60), (job.status, job.info().error)
        info = job.info()
        assert info.attempts == 1 and "lost" in (info.error or ""), info
        assert _until(lambda: not _leftovers(svc), 30), _leftovers(svc)
        time.sleep(1.0)
        assert job.status == "QUEUED"
        # A node that can host it joins: the gang runs again, whole, and finishes.
        spare = _Node(ray_cluster, "127.0.0.8")
        assert job.wait(240) == "SUCCEEDED", job.info()
        info = job.info()
        assert job.result() == "again" and info.attempts == 2
        assert spare.id in info.nodes and doomed.id not in info.nodes
        assert _until(lambda: not _leftovers(svc), 30), _leftovers(svc)
    finally:
        doomed.stop()
        if spare is not None:
            spare.stop()
