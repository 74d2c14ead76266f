"""docs/cluster.md's walk-through, run as written against `matrixos cluster up` (the
docker/compose.yaml topology as local processes: moto S3, PostgreSQL, a Ray head, a CPU worker,
a fake-GPU worker, mosquitto, `matrixos serve`), then `matrixos cluster down`: every process it
started is gone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from matrixos._ray_nodes import session_pids
from matrixos.cluster.services import process_gone

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "cluster.md"
BIN = Path(sys.executable).parent


def _blocks(lang: str, section: str) -> list[str]:
    text = DOC.read_text()
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    part = text[start : end if end >= 0 else None]
    return re.findall(rf"```{lang}\n(.*?)```", part, re.S)


def _alive(pid: int) -> bool:
    # A zombie runs nothing: it only waits for a parent to reap it (where PID 1 does not reap
    # orphans, as in some containers, it waits for ever).
    return not process_gone(pid)


def test_the_cluster_walk_through(tmp_path: Path) -> None:
    up, down = _blocks("bash", "## Without docker")[0], _blocks("bash", "## Without docker")[-1]
    assert "matrixos cluster up" in up and "matrixos cluster down" in down
    walk = "\n".join(_blocks("python", "### The walk-through"))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for name in ("MATRIXOS_WAREHOUSE", "MATRIXOS_CATALOG_URL", "MATRIXOS_COMPUTE", "RAY_ADDRESS"):
        env.pop(name, None)
    started = subprocess.run(
        ["bash", "-ec", up + "\nenv -0"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=400,
    )
    state_file = tmp_path / "cluster" / "cluster.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {"pids": {}}
    try:
        assert started.returncode == 0, started.stderr.decode()[-3000:]
        out = started.stdout.decode()
        assert "cluster up in" in out and "ray-gpu-worker-1 running" in out
        cluster_env = dict(
            item.split("=", 1) for item in out.split("\0") if "=" in item and "\n" not in item
        )
        assert cluster_env["MATRIXOS_WAREHOUSE"] == "s3://warehouse/wh"  # from compose.yaml
        roles = set(state["pids"])
        assert {"s3", "ray-head", "ray-worker-1", "ray-gpu-worker-1", "serve"} <= roles
        ran = subprocess.run(
            [sys.executable, "-c", walk],
            cwd=tmp_path,
            env=cluster_env,
            capture_output=True,
            text=True,
            timeout=400,
        )
        assert ran.returncode == 0, ran.stderr[-4000:]
        lines = ran.stdout.splitlines()
        assert lines[0] == "(2000,)"
        assert lines[1].startswith("Engine: ray (distributed")
        assert lines[2] == "(0, 286, 427927.5)"
        assert lines[3] == "SUCCEEDED GPU 0"
        assert lines[4] == "[('cpu', '-'), ('gpu', 'L4')]"
        assert lines[5] == "[('http', 21.5), ('sensors/hall', 22.5)]"
    finally:
        postgres = 0
        pidfile = Path(state.get("postgres_root", "/nonexistent")) / "data" / "postmaster.pid"
        if pidfile.exists():
            postgres = int(pidfile.read_text().split()[0])
        stopped = subprocess.run(
            ["bash", "-ec", down], cwd=tmp_path, env=env, capture_output=True, timeout=300
        )
    assert stopped.returncode == 0, stopped.stderr.decode()[-2000:]
    leaders = list(state["pids"].values())
    assert leaders and postgres
    assert not [p for p in leaders if session_pids(p)], "a cluster process outlived `down`"
    assert not _alive(postgres)
    status = subprocess.run(
        [str(BIN / "matrixos"), "cluster", "status", "--dir", "cluster"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 1 and "no cluster" in status.stdout


def test_a_failed_up_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    import yaml

    from matrixos.cluster.launcher import cluster_down, cluster_up
    from matrixos.cluster.services import ServiceError

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    compose["services"]["serve"]["command"][-1] += " --no-such-option"  # its sh -c script
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(compose))
    marker = f"MX_CLUSTER_TEST={uuid.uuid4().hex}"
    monkeypatch.setenv(*marker.split("="))  # every process the launcher starts inherits it
    try:
        with pytest.raises(ServiceError, match="matrixos serve did not start") as info:
            cluster_up(tmp_path / "cluster", compose=path, workers=0, gpu_workers=0)
    finally:
        cluster_down(tmp_path / "cluster")  # a no-op unless `up` wrongly succeeded
    assert "no-such-option" in str(info.value)  # the end of the server's log
    assert not (tmp_path / "cluster" / "cluster.json").exists()
    assert not _marked(marker.encode()), "a process of the failed cluster is still running"


def _marked(marker: bytes) -> list[int]:
    """Processes (other than this one) whose environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                found.append(int(entry))
    return found
