"""The IoT write routes against a real ``matrixos serve`` process on 127.0.0.1: 204 only after
the points are durable and visible, gzip, 400 naming line and field (whole batch on v2, partial
on v3), JSON points, tokens and MODIFY, 429 with Retry-After past capacity, and kill -9 of the
server while clients write: every acknowledged point present once, nothing half-visible."""

from __future__ import annotations

import gzip
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts

try:
    from tests.server._serve import MatrixOSServer
except ModuleNotFoundError:
    from server._serve import MatrixOSServer  # type: ignore[no-redef]

STATEMENTS = "/api/2.0/sql/statements"


def make_warehouse(root: Path) -> dict[str, str]:
    """Accounts ``admin``, ``writer`` (may create and write in schema ``iot``) and ``reader``
    (nothing); their tokens."""
    tokens = {}
    with mx.connect(str(root)) as lh:
        lh.sql("CREATE SCHEMA iot")
        accounts = Accounts(lh.catalog)
        for name, admin in (("admin", True), ("writer", False), ("reader", False)):
            accounts.create(name, admin=admin)
            tokens[name] = accounts.create_token(name)
        for privilege, on in (
            ("USE CATALOG", "main"),
            ("USE SCHEMA", "main.iot"),
            ("CREATE", "main.iot"),
            ("MODIFY", "main.iot"),
            ("SELECT", "main.iot"),
        ):
            accounts.grant(privilege, on, "writer")
    return tokens


_SERVERS: dict[str, MatrixOSServer] = {}  # by URL: whose log a failed statement shows


def client(server: MatrixOSServer, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    c = httpx.Client(base_url=server.http_url, headers=headers, timeout=60)
    _SERVERS[str(c.base_url)] = server
    return c


def sql(c: httpx.Client, statement: str) -> list[list[Any]]:
    body = c.post(STATEMENTS, json={"statement": statement, "wait_timeout": "50s"}).json()
    if body["status"]["state"] != "SUCCEEDED":
        server = _SERVERS.get(str(c.base_url))
        log = server.log()[-4000:] if server is not None else ""
        raise AssertionError(f"{statement}: {body}\nserver log:\n{log}")
    return body.get("result", {}).get("data_array") or []


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MatrixOSServer, dict]]:
    root = tmp_path_factory.mktemp("iot-http")
    tokens = make_warehouse(root / "wh")
    server = MatrixOSServer(
        str(root / "wh"), root / "serve.log", args=["--flush-interval", "3600"]
    ).start()
    yield server, tokens
    server.stop()


def test_write_is_visible_before_any_commit(served: tuple) -> None:
    server, tokens = served
    with client(server, tokens["writer"]) as c:
        lines = "\n".join(
            f"cpu,host=h{i % 3} usage={i}.5,n={i}i {1_700_000_000 + i}" for i in range(30)
        )
        r = c.post("/api/v2/write", params={"bucket": "iot.cpu", "precision": "s"}, content=lines)
        assert r.status_code == 204, r.text
        # Read-your-writes: the flusher runs once an hour here, so these come from the log.
        assert sql(c, "SELECT count(*), sum(n) FROM iot.cpu") == [["30", str(sum(range(30)))]]
        gz = gzip.compress(b"cpu,host=h9 usage=1,n=99i 1800000000")
        r = c.post(
            "/api/v2/write",
            params={"bucket": "iot.cpu", "precision": "s"},
            content=gz,
            headers={"Content-Encoding": "gzip"},
        )
        assert r.status_code == 204, r.text
        assert sql(c, "SELECT n FROM iot.cpu WHERE host = 'h9'") == [["99"]]


def test_bad_lines_are_400_naming_line_and_field(served: tuple) -> None:
    server, tokens = served
    with client(server, tokens["writer"]) as c:
        first = c.post(
            "/api/v2/write", params={"bucket": "iot.mem"}, content="mem,host=a used=0i 0"
        )
        assert first.status_code == 204
        body = "mem,host=a used=1i 1\nmem,host=a used=2.5 2\nmem,host=a used=3i 3"
        r = c.post("/api/v2/write", params={"bucket": "iot.mem", "precision": "s"}, content=body)
        assert r.status_code == 400
        err = r.json()
        assert err["code"] == "invalid" and err["line"] == 2 and err["field"] == "used"
        assert "type conflict" in err["message"]
        # v2 refuses the whole batch: nothing of it was written.
        assert sql(c, "SELECT count(*) FROM iot.mem")[0][0] == "1"
        # v3 keeps the good lines and lists the refused one.
        bad = "mem,host=a used=1i 1\nmem,host=a used=abc 2\nmem,host=a used=3i 3"
        r = c.post("/api/v3/write_lp", params={"db": "iot.mem", "precision": "second"}, content=bad)
        assert r.status_code == 400
        assert r.json()["points_written"] == 2
        assert [x["line"] for x in r.json()["rejected"]] == [2]
        assert sql(c, "SELECT count(*) FROM iot.mem")[0][0] == "3"
        r = c.post(
            "/api/v3/write_lp",
            params={"db": "iot.mem", "accept_partial": "false"},
            content="mem,host=a used=9i 9\nmem,host=a used=oops 10",
        )
        assert r.status_code == 400 and r.json()["line"] == 2
        assert sql(c, "SELECT count(*) FROM iot.mem")[0][0] == "3"


def test_json_points(served: tuple) -> None:
    server, tokens = served
    with client(server, tokens["writer"]) as c:
        points = {"points": [{"tags": {"room": "k"}, "fields": {"t": 20.5}, "time": 5}]}
        r = c.post(
            "/api/2.0/iot/points", params={"table": "iot.env", "precision": "s"}, json=points
        )
        assert r.status_code == 204, r.text
        assert sql(c, "SELECT room, t FROM iot.env") == [["k", "20.5"]]
        r = c.post("/api/2.0/iot/points", params={"table": "iot.env"}, content=b"{nope")
        assert r.status_code == 400


def test_tokens_and_modify(served: tuple) -> None:
    server, tokens = served
    line = "cpu,host=x usage=1 1"
    with client(server, None) as c:
        assert (
            c.post("/api/v2/write", params={"bucket": "iot.cpu"}, content=line).status_code == 401
        )
    with client(server, tokens["reader"]) as c:
        r = c.post("/api/v2/write", params={"bucket": "iot.cpu"}, content=line)
        assert r.status_code == 403
        r = c.post("/api/v2/write", params={"bucket": "iot.newtable"}, content=line)
        assert r.status_code == 403


def test_flood_beyond_capacity_gets_429(tmp_path: Path) -> None:
    tokens = make_warehouse(tmp_path / "wh")
    server = MatrixOSServer(
        str(tmp_path / "wh"),
        tmp_path / "serve.log",
        args=["--flush-interval", "3600", "--iot-max-pending-mb", "1"],
    ).start()
    try:
        with client(server, tokens["writer"]) as c:
            acked, refused, retry_after = 0, 0, None
            for i in range(200):
                body = "\n".join(
                    f"cpu,host=h{j} usage={j}.5,other={j}i {i * 10_000 + j}" for j in range(2000)
                )
                r = c.post("/api/v2/write", params={"bucket": "iot.cpu"}, content=body)
                if r.status_code == 204:
                    acked += 2000
                else:
                    assert r.status_code == 429, r.text
                    refused += 1
                    retry_after = r.headers["Retry-After"]
                if refused >= 3:
                    break
            assert refused >= 3 and int(retry_after) >= 1
            assert 0 < acked < 200 * 2000  # bounded by the 1 MiB of pending points
            assert sql(c, "SELECT count(*) FROM iot.cpu") == [[str(acked)]]
    finally:
        server.stop()


# -- kill -9 while clients write --------------------------------------------------------------
def kill9_trial(root: Path, tokens: dict[str, str], seed: int, wal: Path) -> dict[str, int]:
    """Clients write batches of unique points; the server is killed with SIGKILL at a random
    moment; after a restart every acknowledged batch is present exactly once and any other
    batch is present whole or not at all."""
    rng = random.Random(seed)
    args = ["--flush-interval", "0.2", "--wal-dir", str(wal)]
    server = MatrixOSServer(str(root), root.parent / f"serve-{seed}.log", args=args).start()
    acked: set[int] = set()
    sent: set[int] = set()
    stop = threading.Event()
    lock = threading.Lock()
    batch_size = 50

    def writer(w: int) -> None:
        with client(server, tokens["writer"]) as c:
            b = 0
            while not stop.is_set():
                bid = seed * 1_000_000 + w * 10_000 + b
                b += 1
                body = "\n".join(
                    f"k,batch={bid} v={j}i {bid * 1000 + j}" for j in range(batch_size)
                )
                with lock:
                    sent.add(bid)
                try:
                    r = c.post(
                        "/api/v2/write",
                        params={"bucket": "iot.kill", "precision": "us"},
                        content=body,
                    )
                except httpx.HTTPError:
                    return
                if r.status_code == 204:
                    with lock:
                        acked.add(bid)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not acked and time.monotonic() < deadline:  # the table exists, writes flow
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 1.0))
    server.kill()
    stop.set()
    for t in threads:
        t.join()
    server = MatrixOSServer(str(root), root.parent / f"serve-{seed}b.log", args=args).start()
    try:
        with client(server, tokens["admin"]) as c:
            rows = sql(c, "SELECT batch, count(*), count(DISTINCT time) FROM iot.kill GROUP BY 1")
    finally:
        server.stop()
    mine = range(seed * 1_000_000, (seed + 1) * 1_000_000)  # earlier trials' batches stay
    present = {int(b): (int(n), int(d)) for b, n, d in rows if int(b) in mine}
    for bid in acked:
        assert present.get(bid) == (batch_size, batch_size), f"acknowledged batch {bid}"
    for bid, (n, d) in present.items():
        assert bid in sent and n == d == batch_size, f"batch {bid}: {n} rows, {d} times"
    return {"acked": len(acked), "present": len(present)}


def test_kill9_while_writing_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    tokens = make_warehouse(tmp_path / "wh")
    total = 0
    for seed in range(3):
        got = kill9_trial(tmp_path / "wh", tokens, seed, tmp_path / "wal")
        total += got["acked"]
    assert total > 0
