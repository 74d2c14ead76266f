"""The job routes of a real ``matrixos serve`` process: submit, read, logs, cancel, bad requests
naming the field, visibility per principal, entrypoints for admins only, reservations."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.jobs.wiring import open_jobs
from tests.server._serve import MatrixOSServer

JOBS = "/api/2.0/jobs"


def _until_ended(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"{JOBS}/{job_id}").json()
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELED", "OUT_OF_CREDIT"):
            return job  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_jobs_over_http(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    script = tmp_path / "hello.py"
    script.write_text(
        "import sys, time\nprint('hello', sys.argv[1:])\ntime.sleep(float(sys.argv[1]))\n"
    )
    with mx.connect(uri) as lh:
        lh.create_table("s.t", [{"v": 1}, {"v": 2}])
        accounts = Accounts(lh.catalog)
        tokens = {}
        for name in ("alice", "admin"):
            accounts.create(name, admin=name == "admin")
            tokens[name] = accounts.create_token(name)
        for privilege, securable in (("USE CATALOG", "main"), ("USE SCHEMA", "main.s")):
            accounts.grant(privilege, securable, "alice")
        accounts.grant("SELECT", "main.s", "alice")
    server = MatrixOSServer(uri, tmp_path / "server.log").start()
    try:
        alice, admin = (
            httpx.Client(
                base_url=server.http_url,
                headers={"Authorization": f"Bearer {tokens[n]}"},
                timeout=60,
            )
            for n in ("alice", "admin")
        )
        r = alice.post(JOBS, json={"sql": "SELECT sum(v) AS s FROM s.t", "name": "sum"})
        assert r.status_code == 200, r.text
        sql_job = r.json()
        # The server's scheduler may have picked it up before the answer was written.
        assert sql_job["state"] in ("QUEUED", "STARTING", "RUNNING", "SUCCEEDED")
        assert sql_job["principal"] == "alice"
        assert _until_ended(alice, sql_job["id"])["state"] == "SUCCEEDED"
        assert "1 rows" in alice.get(f"{JOBS}/{sql_job['id']}/logs").text

        refused = alice.post(JOBS, json={"entrypoint": [str(script), "0"]})
        assert refused.status_code == 403
        ok = admin.post(JOBS, json={"entrypoint": [str(script), "0"]}).json()
        long = admin.post(JOBS, json={"entrypoint": [str(script), "60"], "name": "long"}).json()
        assert _until_ended(admin, ok["id"])["exit_code"] == 0
        assert admin.get(f"{JOBS}/{ok['id']}/logs", params={"tail": 1}).text == "hello ['0']\n"
        deadline = time.monotonic() + 60
        while admin.get(f"{JOBS}/{long['id']}").json()["state"] != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert admin.post(f"{JOBS}/{long['id']}/cancel").status_code == 200
        assert _until_ended(admin, long["id"])["state"] == "CANCELED"

        bad = alice.post(JOBS, json={"sql": "SELECT 1", "gpus": -1})
        assert bad.status_code == 400 and bad.json()["field"] == "gpus"
        assert alice.post(JOBS, json={"sql": "SELECT 1", "account": "nobody"}).json()["field"] == (
            "account"
        )
        assert alice.get(f"{JOBS}/{ok['id']}").status_code == 404  # admin's job
        assert {j["id"] for j in alice.get(JOBS).json()["jobs"]} == {sql_job["id"]}
        assert len(admin.get(JOBS).json()["jobs"]) == 3
        # a job queued by another process (here: a session that does not schedule) is run
        # by the server's scheduler
        with mx.connect(uri) as lh:
            svc = open_jobs(lh.service, ray=False, connect={"warehouse": uri}, schedule=False)
            queued = svc.for_principal(lh.principal).submit("SELECT 2 AS two")
            svc.close()
        assert _until_ended(admin, queued.id)["state"] == "SUCCEEDED"
        booking = alice.post(
            "/api/2.0/reservations", json={"gpus": 1, "start": time.time() + 60, "duration": "1h"}
        )
        assert booking.status_code == 400 and booking.json()["field"] in ("gpus", "accelerators")
    finally:
        server.stop()


def test_huge_or_non_finite_numbers_are_refused_naming_the_field(tmp_path: Path) -> None:
    """Regression (schemathesis): huge, negative or NaN numbers in a job or reservation body
    answer 400 naming the field, never a 500 (timedelta/datetime overflow, SQLite int64)."""
    uri = str(tmp_path / "wh")
    with mx.connect(uri) as lh:
        accounts = Accounts(lh.catalog)
        accounts.create("alice")
        token = accounts.create_token("alice")
    server = MatrixOSServer(uri, tmp_path / "server.log").start()
    try:
        alice = httpx.Client(
            base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        bookings = [
            ({"gpus": 14859176922705745994517053440, "start": -1.19e305, "duration": -5.5e16},
             {"gpus", "start"}),
            ({"gpus": 1, "start": -1.19e305, "duration": 60}, {"gpus", "start"}),
            ({"gpus": 1, "start": 0, "duration": 1e300}, {"gpus", "duration"}),
            ({"gpus": 1, "start": 0, "duration": "99999999999999999999999d"}, {"gpus", "duration"}),
        ]  # fmt: skip
        for body, fields in bookings:
            r = alice.post("/api/2.0/reservations", json={**body, "extra": 1})
            assert r.status_code == 400, (body, r.text)
            assert r.json()["field"] in fields, (body, r.text)
        for raw, field in (
            ('{"gpus": 1, "start": NaN, "duration": 60}', {"gpus", "start"}),
            ('{"gpus": 1, "start": 0, "duration": Infinity}', {"gpus", "duration"}),
            ('{"gpus": 1, "start": 0, "duration": 60, "cpus": NaN}', {"gpus", "cpus"}),
        ):
            r = alice.post(
                "/api/2.0/reservations", content=raw, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 400 and r.json()["field"] in field, (raw, r.text)
        jobs = [
            ({"priority": 2**70}, "priority"),
            ({"priority": -(2**70)}, "priority"),
            ({"max_runtime": 1e300}, "max_runtime"),
            ({"max_runtime": "9999999999999999999999999w"}, "max_runtime"),
            ({"nodes": 2**70}, "nodes"),
            ({"gpus": 2**70}, "gpus"),
            ({"cpus": 1e308}, "cpus"),
        ]
        for extra, field in jobs:
            r = alice.post(JOBS, json={"sql": "SELECT 1", **extra})
            assert r.status_code == 400 and r.json()["field"] == field, (extra, r.text)
        r = alice.post(
            JOBS,
            content='{"sql": "SELECT 1", "max_runtime": NaN}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400 and r.json()["field"] == "max_runtime", r.text
        assert alice.get(JOBS).json()["jobs"] == []
    finally:
        server.stop()
