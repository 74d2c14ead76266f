"""``matrixos compute start`` / ``compute stop``: stop exactly the node that was started, while
another Ray cluster on the same machine (the shared test cluster) keeps running."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from matrixos._ray_nodes import nodes_dir, session_pids, stop_nodes
from matrixos.compute import free_port

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]

IP = "127.0.0.5"  # a loopback address of its own, apart from the test cluster's nodes
MATRIXOS = str(Path(sys.executable).with_name("matrixos"))


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MATRIXOS_HOME": str(home)}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        env.pop(name, None)
    return subprocess.run(
        [MATRIXOS, "compute", *args], env=env, capture_output=True, text=True, timeout=180
    )


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie that nobody reaped yet is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((IP, port), timeout=1):
        return True
    return False


def test_stop_stops_only_what_start_started(tmp_path: Path, ray_cluster: RayCluster) -> None:
    home = tmp_path / "home"
    temp_dir = tempfile.mkdtemp(prefix="mxst-", dir="/tmp")  # Ray's socket paths stay short
    port = free_port(IP)
    try:
        started = _cli(
            home, "start", "--head", "--node-ip-address", IP, "--port", str(port),
            "--num-cpus", "1", "--temp-dir", temp_dir,
        )  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"started Ray head node {IP} of cluster {IP}:{port}" in started.stdout
        assert "matrixos compute stop" in started.stdout and "ray stop" not in started.stdout
        [record_file] = nodes_dir(home).glob("*.json")
        record = json.loads(record_file.read_text())
        node = session_pids(record["pid"])
        assert len(node) > 2  # `ray start --block`, the GCS, the raylet, agents…
        assert _listening(port)

        again = _cli(home, "start", "--head", "--node-ip-address", IP, "--port", str(port))
        assert again.returncode == 1 and "already running" in again.stderr

        stopped = _cli(home, "stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"stopped Ray head node {IP} of cluster {IP}:{port}" in stopped.stdout
        assert session_pids(record["pid"]) == []
        assert [pid for pid in node if _running(pid)] == []
        assert not _listening(port)
        assert list(nodes_dir(home).glob("*.json")) == []
        # The other cluster on this machine was not touched.
        for other in ray_cluster.nodes:
            assert other.pid in session_pids(other.pid)
            assert len(session_pids(other.pid)) > 2

        nothing = _cli(home, "stop")
        assert nothing.returncode == 0
        assert "no node started by `matrixos compute start` is running" in nothing.stdout
    finally:
        stop_nodes(home, grace_s=5)
        shutil.rmtree(temp_dir, ignore_errors=True)
