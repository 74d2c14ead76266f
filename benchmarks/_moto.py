"""A moto S3 server for the benchmarks (``--backend s3``), in a child process.

The same moto set-up the tests use (tests/_servers.py; benchmarks do not import tests), plus a
"settle" request on its stdin that the torture benchmark uses after a kill -9: it returns once
the server has served and closed every connection from the killed process's ports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def tcp_ports(pid: int, remote_port: int) -> list[int]:
    """Local ports of process ``pid``'s TCP connections to ``remote_port`` (Linux /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes and int(f[2].rsplit(":", 1)[1], 16) == remote_port:
                ports.append(int(f[1].rsplit(":", 1)[1], 16))
    return ports


# ----------------------------------------------------------------------------- S3 (moto)
# The same moto server the tests use (tests/_servers.py; benchmarks do not import tests): PUTs
# are serialized because moto checks If-None-Match and stores the object in two steps, so
# without the lock two conditional commits could both win — a fake-S3 artefact, not ours.
_MOTO = """
import logging, select, sys, threading, time
logging.getLogger("werkzeug").setLevel(logging.WARNING)
from moto.s3.responses import S3Response
from moto.server import ThreadedMotoServer
from werkzeug.serving import ThreadedWSGIServer
lock = threading.Lock()
def locked(f):
    def g(*a, **k):
        with lock:
            return f(*a, **k)
    return g
for n in ("put_object", "_key_response_post"):
    setattr(S3Response, n, locked(getattr(S3Response, n)))
# open connections by socket, with the client's port, so that "settle" can wait for a killed
# client's connections to be served and closed; accept() runs under the same lock
conns, reg = {}, threading.Lock()
get_request, shutdown_request = ThreadedWSGIServer.get_request, ThreadedWSGIServer.shutdown_request
def accept(self):
    with reg:
        sock, addr = get_request(self)
        conns[id(sock)] = addr[1]
    return sock, addr
def close(self, request):
    try:
        shutdown_request(self, request)
    finally:
        with reg:
            conns.pop(id(request), None)
ThreadedWSGIServer.get_request, ThreadedWSGIServer.shutdown_request = accept, close
# requests answered, by method ("count" on stdin prints and resets them: benchmarks/s3_plans.py)
import collections, json
from werkzeug.serving import WSGIRequestHandler
served = collections.Counter()
def log_request(self, code="-", size="-"):
    with reg:
        served[self.command] += 1
WSGIRequestHandler.log_request = log_request
s = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
s.start()
print(s.get_host_and_port()[1], flush=True)
for line in sys.stdin:  # "settle PORT...": reply once no connection from those ports is open
    if line.startswith("count"):
        with reg:
            print(json.dumps(served), flush=True)
            served.clear()
        continue
    ports, end, ok = {int(p) for p in line.split()[1:]}, time.monotonic() + 120, False
    while not ok and time.monotonic() < end:
        with reg:
            ok = not set(conns.values()) & ports and not select.select([s._server], [], [], 0)[0]
        if not ok:
            time.sleep(0.005)
    print("ok" if ok else "timeout", flush=True)
"""
MOTO_SERVERS: dict[str, MotoS3] = {}  # endpoint -> the server this process started


class MotoS3:
    """A moto S3 server on 127.0.0.1 in a child process, for ``--backend s3``."""

    def __enter__(self) -> MotoS3:
        # its own session: a SIGTERM/SIGSTOP sent to the benchmark's process group does not
        # reach it (a stopping run still checks its table); it ends when stdin closes
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.endpoint = f"http://127.0.0.1:{self.port}"
        MOTO_SERVERS[self.endpoint] = self
        return self

    def settle(self, ports: list[int]) -> None:
        """Return once the server has no open connection from ``ports`` and none waiting to
        be accepted."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(" ".join(["settle", *map(str, ports)]) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"moto still serves the killed writers' connections {ports}")

    def counts(self) -> dict[str, int]:
        """The requests the server answered since the last call, by HTTP method."""
        import json

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def __exit__(self, *exc: object) -> None:
        MOTO_SERVERS.pop(self.endpoint, None)
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)

    def bucket(self) -> tuple[str, dict[str, str]]:
        import uuid

        import boto3

        opts = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ALLOW_HTTP": "true",
        }
        name = f"torture-{uuid.uuid4().hex[:10]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ).create_bucket(Bucket=name)
        return f"s3://{name}/wh", opts
