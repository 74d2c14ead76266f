"""A real Ray cluster for the compute tests: a head and two workers started with ``ray start``.

Each node has its own loopback address (127.0.0.2 head, .3 and .4 workers: Ray rewrites
127.0.0.1 to the machine's interface address), one CPU, a storage zone (``a``, ``b``, ``c``), its
own temp folder, its own file cache (``MATRIXOS_CACHE_DIR``, bounded by ``CACHE_MAX_BYTES``) and
its own ports; token authentication is on, the dashboard off, usage stats off. Nothing is left
running: every node's processes (``ray start --block`` in a session of its own, and whatever it
spawned: GCS, raylet, agents, workers) are stopped by process id.

One cluster per test run, shared by pytest-xdist workers (a lock file and the users' process
ids in the run's shared temp folder: the first worker to need it starts it, the last live one
out stops it).
The test process joins it once per worker (``ray_pool``), as a driver on the head node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from matrixos._filelock import locked
from matrixos._ray_nodes import session_pids, stop_sessions
from matrixos.compute import ComputePool, ensure_token, free_port, node_env, ray_start_command
from matrixos.config import Settings

try:
    from tests.compute._cluster import Node, RayCluster
except ModuleNotFoundError:
    from _cluster import Node, RayCluster  # type: ignore[no-redef]

HEAD = "127.0.0.2"
NODES = (("127.0.0.2", "a"), ("127.0.0.3", "b"), ("127.0.0.4", "c"))
GPU_ZONE = "c"  # the node that advertises one (accounting-only) GPU
# Its accelerator type, as a Ray custom resource that stands in for a real one (the jobs
# scheduler reads it like any node's ``accelerator_type:<name>``).
GPU_TYPE = "L4"
_STATE = "ray-cluster.json"
_START_TIMEOUT = 120.0
_RAY = str(Path(sys.executable).with_name("ray"))
CACHE_MAX_BYTES = 256 * 1024 * 1024


# -- processes ----------------------------------------------------------------------------------
def _alive_pid(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_nodes(nodes: list[Node]) -> None:
    stop_sessions([n.pid for n in nodes])  # `ray start --block` stops its processes


def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not open {host}:{port}:\n{log.read_text()[-3000:]}")


def _start_cluster() -> RayCluster:
    # Short paths: Ray's unix socket paths must stay under 108 bytes.
    root = tempfile.mkdtemp(prefix="mxrc-", dir="/tmp")
    token = ensure_token(root)
    assert token is not None
    env = {**os.environ, **node_env(token)}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):
        env.pop(name, None)
    # Ray keeps CPU-only work off GPU nodes while others have room; here the GPU node is also
    # one of three equal CPU nodes (and a storage zone), so schedule CPU work on it as usual.
    env["RAY_scheduler_avoid_gpu_nodes"] = "0"
    # free_port never hands out one port twice (Ray refuses a port two components share)
    port = free_port
    gcs_port = port(HEAD)
    client_port = port(HEAD)
    nodes: list[Node] = []
    try:
        for ip, zone in NODES:
            head = ip == HEAD
            temp_dir = os.path.join(root, zone)
            os.mkdir(temp_dir)
            # Fixed defaults (52365, 10001, …) would collide between nodes of one machine.
            ports = {
                "dashboard-agent-listen-port": port(ip),
                "dashboard-agent-grpc-port": port(ip),
                "metrics-export-port": port(ip),
                "runtime-env-agent-port": port(ip),
            }
            if head:
                ports["ray-client-server-port"] = client_port
            args = ray_start_command(
                head=head,
                node_ip=ip,
                address=None if head else f"{HEAD}:{gcs_port}",
                port=gcs_port,
                num_cpus=1,
                num_gpus=1 if zone == GPU_ZONE else 0,
                zone=zone,
                temp_dir=temp_dir,
                object_store_memory=128 * 1024 * 1024,
                resources={f"accelerator_type:{GPU_TYPE}": 1} if zone == GPU_ZONE else None,
                block=True,
                ports=ports,
                ray=_RAY,
            )
            log = Path(root) / f"{zone}.log"
            cache_dir = os.path.join(root, f"cache-{zone}")
            node_env_ = {
                **env,
                "MATRIXOS_ZONE": zone,
                "MATRIXOS_CACHE_DIR": cache_dir,
                "MATRIXOS_CACHE_MAX_BYTES": str(CACHE_MAX_BYTES),
            }
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    args,
                    env=node_env_,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            agent = ports["dashboard-agent-listen-port"]
            nodes.append(Node(ip, zone, proc.pid, temp_dir, agent, cache_dir))
            if head:
                _wait_port(HEAD, gcs_port, proc, log)
        cluster = RayCluster(f"{HEAD}:{gcs_port}", client_port, str(token), root, nodes)
        _wait_nodes(cluster)
    except BaseException:
        _stop_nodes(nodes)
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def _alive_nodes(address: str, token: str) -> int:
    """Nodes the cluster's GCS reports alive (asked over gRPC with the token; this process
    does not join the cluster)."""
    import grpc
    from ray.core.generated import gcs_pb2, gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            reply = stub.GetAllNodeInfo(
                gcs_service_pb2.GetAllNodeInfoRequest(),
                metadata=(("authorization", "Bearer " + token),),
                timeout=10,
            )
        except grpc.RpcError:
            return 0
    alive = gcs_pb2.GcsNodeInfo.GcsNodeState.ALIVE
    return sum(1 for n in reply.node_info_list if n.state == alive)


def _wait_nodes(cluster: RayCluster) -> None:
    token = Path(cluster.token_file).read_text().strip()
    deadline = time.monotonic() + _START_TIMEOUT
    while _alive_nodes(cluster.address, token) < len(NODES):
        if time.monotonic() > deadline:
            logs = "\n".join(
                p.read_text()[-2000:] for p in sorted(Path(cluster.root).glob("*.log"))
            )
            raise RuntimeError(f"not all {len(NODES)} Ray nodes came up:\n{logs}")
        time.sleep(0.3)


def _alive(cluster: RayCluster) -> bool:
    return all(session_pids(n.pid) for n in cluster.nodes)


@pytest.fixture(scope="session")
def ray_cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RayCluster]:
    """The shared 3-node cluster, every node up (started on first use, stopped by its last
    user)."""
    shared = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # a pytest-xdist worker
        shared = shared.parent  # the run's folder, common to all xdist workers
    state, lock = shared / _STATE, shared / (_STATE + ".lock")
    with locked(lock):
        data = json.loads(state.read_text()) if state.exists() else None
        cluster = None
        if data is not None:
            cluster = RayCluster(**{**data["cluster"], "nodes": []})
            cluster.nodes = [Node(**n) for n in data["cluster"]["nodes"]]
            if not _alive(cluster):
                _stop_nodes(cluster.nodes)
                cluster, data = None, None
        if cluster is None:
            cluster = _start_cluster()
            data = {"cluster": asdict(cluster), "users": []}
        data["users"].append(os.getpid())
        state.write_text(json.dumps(data))
    try:
        yield cluster
    finally:
        with locked(lock):
            data = json.loads(state.read_text()) if state.exists() else None
            if data is None or data["cluster"]["root"] != cluster.root:
                # Our cluster died and another worker started a new one in its place (without
                # us among its users), which may be gone already too: only ours is left to
                # clean up, and the shared state is not ours to change.
                _stop_nodes(cluster.nodes)
                shutil.rmtree(cluster.root, ignore_errors=True)
            else:
                # Users are process ids: an xdist worker that crashed (and never got here) does
                # not keep the cluster alive after the last live user leaves.
                data["users"] = [p for p in data["users"] if p != os.getpid() and _alive_pid(p)]
                if not data["users"]:
                    _stop_nodes(cluster.nodes)
                    state.unlink()
                    shutil.rmtree(cluster.root, ignore_errors=True)
                else:
                    state.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def ray_pool(ray_cluster: RayCluster, _isolated_home: Path) -> Iterator[ComputePool]:
    """This process joined to the cluster (as a driver on the head node), with its token.
    Sessions with ``compute=ray_cluster.address`` share the connection."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in node_env(ray_cluster.token_file).items():
            mp.setenv(name, value)
        mp.delenv("RAY_ADDRESS", raising=False)
        pool = ComputePool(Settings(compute=ray_cluster.address)).start()
        try:
            yield pool
        finally:
            pool.shutdown()


@pytest.fixture(scope="module", params=["broadcast", "partitioned"])
def modes_lh(
    request: pytest.FixtureRequest, modes_warehouse: str, ray_cluster: RayCluster
) -> Iterator[Any]:
    """A session on the cluster over the module's ``modes_warehouse``, in two modes: ``broadcast``
    (default thresholds: small join sides broadcast) and ``partitioned``
    (``broadcast_max_bytes`` = the module's ``SMALL``: large sides hash-partitioned)."""
    import matrixos as mx

    settings: dict[str, Any] = {"compute": ray_cluster.address}
    if request.param == "partitioned":
        settings["broadcast_max_bytes"] = request.module.SMALL
    with mx.connect(modes_warehouse, **settings) as lh:
        yield lh
