"""The compute pool: targets, the auth token, a private runtime, and a 3-node cluster's status."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

import matrixos as mx
from matrixos.compute import (
    ComputePool,
    ComputeTarget,
    ensure_token,
    parse_compute,
    ray_start_command,
    token_path,
)
from matrixos.config import Settings
from matrixos.errors import ComputeError, ConfigError

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]


# -- configuration (no Ray) -----------------------------------------------------------------
def test_parse_compute_targets() -> None:
    assert parse_compute("local", env={}) == ComputeTarget("local")
    assert parse_compute("ray", env={}).private
    joined = parse_compute("ray", env={"RAY_ADDRESS": "127.0.0.2:6379"})
    assert joined == ComputeTarget("ray", "127.0.0.2:6379")
    assert joined.node_ip == "127.0.0.2"  # a loopback cluster: the driver's node address
    assert parse_compute("10.1.2.3:6379", env={}).node_ip is None
    client = parse_compute("ray://head.example:10001", env={})
    assert client.client and client.node_ip is None
    for bad in ("spark", "ray://nohost", "host:99999", ""):
        with pytest.raises(ConfigError):
            parse_compute(bad, env={})


def test_connect_refuses_an_unknown_compute_target(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a compute target"):
        mx.connect(str(tmp_path / "wh"), compute="yarn")


def test_local_pool_is_in_process() -> None:
    with ComputePool(Settings(compute="local", zone="z9")) as pool:
        status = pool.status()
    assert status["mode"] == "local" and not pool.is_ray
    [node] = status["nodes"]
    assert node["zone"] == "z9" and node["cpus"] >= 1


def test_token_file_is_created_private_and_refused_when_readable(tmp_path: Path) -> None:
    path = ensure_token(tmp_path)
    assert path == token_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0  # secrets.token_hex(32)
    assert ensure_token(tmp_path) == path and path.read_text() == token  # kept
    assert ensure_token(tmp_path / "elsewhere", create=False) is None
    path.chmod(0o644)
    with pytest.raises(ComputeError, match="read by other users"):
        ensure_token(tmp_path)


def test_ray_start_command_is_secure_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MATRIXOS_ZONE", "eu-1a")
    args = ray_start_command(head=True, node_ip="127.0.0.2", port=7000, num_cpus=2)
    assert "--include-dashboard=false" in args and "--disable-usage-stats" in args
    assert '--resources={"zone:eu-1a": 1}' in args
    assert "--labels=matrixos.io/zone=eu-1a" in args
    worker = ray_start_command(head=False, address="127.0.0.2:7000", zone="b")
    assert "--address=127.0.0.2:7000" in worker and "--head" not in worker
    with pytest.raises(ConfigError):
        ray_start_command(head=False)


# -- a private runtime ------------------------------------------------------------------------
_PRIVATE = r"""
import json, os, stat, sys
import psutil
import pyarrow as pa
import ray
import matrixos as mx
from matrixos.compute import token_path

lh = mx.connect(sys.argv[1], compute="ray", zone="z1")
lh.create_table("s.t", pa.table({"g": [1, 2, 1, 2], "v": [1.5, 2.5, 3.5, 4.5]}))
lh.table("s.t").append(pa.table({"g": [3], "v": [10.0]}))
q = "SELECT g, sum(v) AS s, count(*) AS n FROM s.t GROUP BY g ORDER BY g"
status = lh.compute.status()
tok = token_path(os.environ["MATRIXOS_HOME"])
out = {
    "status": status,
    "token_mode": stat.S_IMODE(tok.stat().st_mode),
    "auth_mode": os.environ.get("RAY_AUTH_MODE"),
    "ray": lh.sql(q, engine="ray").to_arrow().to_pylist(),
    "local": lh.sql(q, engine="local").to_arrow().to_pylist(),
    "children": [p.pid for p in psutil.Process().children(recursive=True)],
}
lh.close()
out["initialized_after_close"] = ray.is_initialized()
out["auth_mode_after_close"] = os.environ.get("RAY_AUTH_MODE")
print(json.dumps(out))
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_private_runtime_starts_secured_and_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["MATRIXOS_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-c", _PRIVATE, str(tmp_path / "wh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    status = out["status"]
    assert status["mode"] == "ray" and status["private"] and status["auth"] == "token"
    [node] = status["nodes"]
    assert node["address"] == "127.0.0.1" and node["alive"] and node["zone"] == "z1"
    assert out["token_mode"] == 0o600 and out["auth_mode"] == "token"
    assert out["ray"] == out["local"]
    assert out["local"] == [
        {"g": 1, "s": 5.0, "n": 2},
        {"g": 2, "s": 7.0, "n": 2},
        {"g": 3, "s": 10.0, "n": 1},
    ]
    assert not out["initialized_after_close"] and out["auth_mode_after_close"] is None
    # Every process the runtime started (GCS, raylet, agents, workers) has exited.
    assert out["children"]
    deadline = time.monotonic() + 60
    while not all(_gone(p) for p in out["children"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in out["children"] if not _gone(p)] == []


# -- the 3-node cluster ---------------------------------------------------------------------
def test_status_shows_three_nodes_with_their_zones(
    ray_pool: ComputePool, ray_cluster: RayCluster
) -> None:
    status = ray_pool.status()
    assert status["mode"] == "ray" and not status["private"]
    alive = [n for n in status["nodes"] if n["alive"]]
    assert {(n["address"], n["zone"]) for n in alive} == {
        ("127.0.0.2", "a"),
        ("127.0.0.3", "b"),
        ("127.0.0.4", "c"),
    }
    # node c advertises one GPU (accounting only: see conftest.py), an L4 stand-in
    assert all(n["cpus"] == 1 for n in alive)
    assert {n["zone"]: n["accelerator"] for n in alive} == {"a": None, "b": None, "c": "L4"}
    assert {n["zone"]: n["gpus"] for n in alive} == {"a": 0, "b": 0, "c": 1}
    assert [n["address"] for n in alive if n["head"]] == ["127.0.0.2"]
    assert status["cpus"] == 3 and ray_pool.num_cpus() == 3


def test_lakehouse_shares_the_connection(ray_pool: ComputePool, ray_cluster: RayCluster) -> None:
    import ray

    with mx.connect(ray_cluster.root + "/wh-share", compute=ray_cluster.address) as lh:
        assert lh.compute.status()["cpus"] == 3
    assert ray.is_initialized()  # the session let go; the test process still holds it
    with pytest.raises(ComputeError, match="one cluster per process"):
        ComputePool(Settings(compute="127.0.0.9:6379")).start()


def test_cli_compute_status(ray_pool: ComputePool, ray_cluster: RayCluster) -> None:
    from matrixos.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["compute", "status", "--compute", ray_cluster.address, "--format", "json"]
    )
    assert res.exit_code == 0, res.output
    status = json.loads(res.output)
    assert sorted(n["zone"] for n in status["nodes"] if n["alive"]) == ["a", "b", "c"]
    res = runner.invoke(app, ["compute", "status", "--compute", ray_cluster.address])
    assert res.exit_code == 0, res.output
    assert "3 node(s) alive, 3 CPU(s)" in res.output and "(3 rows)" in res.output


def test_cluster_refuses_clients_without_the_token(ray_cluster: RayCluster) -> None:
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    token = Path(ray_cluster.token_file).read_text().strip()
    with grpc.insecure_channel(ray_cluster.address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        request = gcs_service_pb2.GetAllNodeInfoRequest()
        for metadata in ((), (("authorization", "Bearer " + "0" * 64),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetAllNodeInfo(request, metadata=metadata, timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.GetAllNodeInfo(
            request, metadata=(("authorization", "Bearer " + token),), timeout=30
        )
        assert len(reply.node_info_list) >= 3
    # The dashboard agent's job API (ShadowRay's way in) wants the token too.
    head = ray_cluster.node("a")
    url = f"http://{head.ip}:{head.agent_port}/api/job_agent/jobs/"
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(url, timeout=30)
    assert http_err.value.code in (401, 403)
    authed = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    try:
        urllib.request.urlopen(authed, timeout=30)
    except urllib.error.HTTPError as e:
        assert e.code not in (401, 403)  # past authentication (GET is not a job call)


_CLIENT = r"""
import json, sys
from matrixos.compute import ComputePool
from matrixos.config import Settings
with ComputePool(Settings(compute=sys.argv[1])) as pool:
    status = pool.status()
print(json.dumps(status))
"""


def test_ray_client_target(ray_cluster: RayCluster) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": ray_cluster.token_file})
    address = f"ray://{ray_cluster.nodes[0].ip}:{ray_cluster.client_port}"
    proc = subprocess.run(
        [sys.executable, "-c", _CLIENT, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status["address"] == address
    assert sorted(n["zone"] for n in status["nodes"] if n["alive"]) == ["a", "b", "c"]
