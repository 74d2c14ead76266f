"""``matrixos cluster up|status|down``: the docker/compose.yaml topology as local processes.

``up`` starts, each in a session of its own so it outlives the command: a moto S3 server (for
MinIO) with the warehouse's bucket, PostgreSQL (initdb + pg_ctl, for the catalog database), a Ray
head on 127.0.0.2 and workers on 127.0.0.3… (CPU workers, then GPU workers that advertise a GPU
and an ``accelerator_type:<label>`` resource: stand-ins for the compose GPU service), mosquitto
when the compose server has ``--mqtt`` and it is installed, and ``matrixos serve`` pointed at them
all. It makes an admin account with a token, and writes ``<dir>/cluster.json``: process ids,
addresses, and the variables a client exports (``<dir>/env.sh``). ``down`` stops every process it
recorded (SIGTERM, then SIGKILL) and the database; ``status`` says which still run.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matrixos._ray_nodes import session_pids, start_node, stop_sessions
from matrixos.cluster.services import (
    LOCALHOST,
    PostgresServer,
    S3Server,
    ServiceError,
    free_port,
)
from matrixos.cluster.topology import Topology, read_topology
from matrixos.compute import ensure_token, node_env, ray_start_command

__all__ = ["ClusterState", "cluster_down", "cluster_status", "cluster_up", "load_state"]

STATE_FILE = "cluster.json"
ENV_FILE = "env.sh"
HEAD_IP = "127.0.0.2"
ADMIN = "admin"
_START_TIMEOUT = 120.0


@dataclass
class ClusterState:
    """What ``cluster up`` started (``<dir>/cluster.json``)."""

    dir: str
    topology: str  # the compose file it was read from
    pids: dict[str, int] = field(default_factory=dict)  # name -> session leader
    postgres_root: str = ""
    postgres_port: int = 0
    s3_endpoint: str = ""
    warehouse: str = ""
    catalog_url: str = ""
    ray_address: str = ""
    http_url: str = ""
    pg_port: int = 0
    mqtt_url: str | None = None
    token_file: str = ""
    temp_dirs: list[str] = field(default_factory=list)  # Ray's session folders
    env: dict[str, str] = field(default_factory=dict)


def load_state(folder: str | os.PathLike[str]) -> ClusterState | None:
    """The state of the cluster in ``folder``, None when none was started there."""
    path = Path(folder) / STATE_FILE
    if not path.exists():
        return None
    return ClusterState(**json.loads(path.read_text()))


def _save(state: ClusterState) -> None:
    folder = Path(state.dir)
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(folder / STATE_FILE)
    lines = [f"export {k}={_quote(v)}" for k, v in sorted(state.env.items())]
    (folder / ENV_FILE).write_text("\n".join(lines) + "\n")


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _spawn(args: list[str], env: dict[str, str], log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def _wait(check: Any, what: str, pid: int, log: Path, timeout: float = _START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not session_pids(pid):
            break
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.3)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
    raise ServiceError(f"{what} did not start; its log {log} ends with:\n{tail}")


def cluster_up(
    folder: str | os.PathLike[str],
    *,
    compose: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    gpu_workers: int | None = None,
    http_port: int = 0,
    pg_port: int = 0,
) -> ClusterState:
    """Start the topology of ``compose`` (docker/compose.yaml) in ``folder``; see the module.

    ``workers`` / ``gpu_workers`` override the compose file's replica counts; ports 0 pick
    free ones. On failure everything already started is stopped again.
    """
    topo = read_topology(compose)
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    old = load_state(root)
    if old is not None and any(session_pids(p) for p in old.pids.values()):
        raise ServiceError(
            f"a cluster is already running in {root}",
            hint=f"matrixos cluster down --dir {root}",
        )
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    state = ClusterState(dir=str(root), topology=topo.source)
    try:
        _start_all(state, topo, root, logs, workers, gpu_workers, http_port, pg_port)
    except BaseException:
        _save(state)
        cluster_down(root)
        raise
    _save(state)
    return state


def _start_all(
    state: ClusterState,
    topo: Topology,
    root: Path,
    logs: Path,
    workers: int | None,
    gpu_workers: int | None,
    http_port: int,
    pg_port: int,
) -> None:
    # -- S3 (MinIO's stand-in) and the warehouse's bucket
    s3, state.pids["s3"] = S3Server.start_detached(logs / "s3.log")
    _save(state)
    s3.make_bucket(topo.bucket)
    state.s3_endpoint = s3.endpoint_url
    state.warehouse = f"s3://{topo.bucket}/{topo.prefix}".rstrip("/")
    # -- PostgreSQL: the catalog database
    pg = PostgresServer()
    pg.start()
    assert pg.root is not None
    state.postgres_root, state.postgres_port = str(pg.root), pg.port
    _save(state)
    state.catalog_url = pg.url(pg.create_database("matrixos"))
    env = {
        "MATRIXOS_WAREHOUSE": state.warehouse,
        "MATRIXOS_CATALOG_URL": state.catalog_url,
        **s3.storage_options,
    }
    # -- Ray: head, CPU workers, GPU workers (each its loopback address and its own ports)
    token = ensure_token(root / "home")
    assert token is not None
    ray_env = {**os.environ, **env, **node_env(token), "RAY_scheduler_avoid_gpu_nodes": "0"}
    for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        ray_env.pop(name, None)
    gcs = free_port(HEAD_IP)
    state.ray_address = f"{HEAD_IP}:{gcs}"
    n_workers = topo.workers if workers is None else workers
    n_gpu = topo.gpu_workers if gpu_workers is None else gpu_workers
    nodes = [("head", HEAD_IP, topo.head_cpus, 0)]
    for i in range(n_workers):
        nodes.append((f"worker-{i + 1}", f"127.0.0.{3 + i}", topo.worker_cpus, 0))
    for i in range(n_gpu):
        ip = f"127.0.0.{3 + n_workers + i}"
        nodes.append((f"gpu-worker-{i + 1}", ip, topo.gpu_cpus, topo.gpus_per_worker))
    ray = Path(sys.executable).with_name("ray")
    for name, ip, cpus, gpus in nodes:
        temp = Path("/tmp") / f"mxcl-{os.getpid()}-{name}"  # short: Ray's socket paths
        temp.mkdir(exist_ok=True)
        state.temp_dirs.append(str(temp))
        ports = {
            "dashboard-agent-listen-port": free_port(ip),
            "dashboard-agent-grpc-port": free_port(ip),
            "metrics-export-port": free_port(ip),
            "runtime-env-agent-port": free_port(ip),
        }
        if name == "head":
            ports["ray-client-server-port"] = free_port(ip)
        resources = (
            {f"accelerator_type:{topo.accelerator}": gpus} if gpus and topo.accelerator else None
        )
        args = ray_start_command(
            head=name == "head",
            node_ip=ip,
            address=None if name == "head" else state.ray_address,
            port=gcs,
            num_cpus=cpus,
            num_gpus=gpus,
            zone=name.rsplit("-", 1)[0] if name != "head" else "head",
            temp_dir=str(temp),
            object_store_memory=128 * 1024 * 1024,
            resources=resources,
            block=True,
            ports=ports,
            ray=str(ray) if ray.exists() else "ray",
        )
        node_env_ = {**ray_env, "MATRIXOS_CACHE_DIR": str(root / "cache" / name)}
        record = start_node(
            args,
            node_env_,
            root / "home",
            head=name == "head",
            node_ip=ip,
            address=state.ray_address,
        )
        state.pids[f"ray-{name}"] = record.pid
        _save(state)
    # -- mosquitto (the compose mqtt service), when the server subscribes and it is installed
    mosquitto = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )
    serve_extra: list[str] = []
    if topo.mqtt and mosquitto:
        mqtt_port = free_port()
        conf = root / "mosquitto.conf"
        conf.write_text(f"listener {mqtt_port} {LOCALHOST}\nallow_anonymous true\n")
        log = logs / "mosquitto.log"
        state.pids["mosquitto"] = _spawn([mosquitto, "-c", str(conf)], dict(os.environ), log)
        _save(state)
        _wait(lambda: _connects(LOCALHOST, mqtt_port), "mosquitto", state.pids["mosquitto"], log)
        state.mqtt_url = f"mqtt://{LOCALHOST}:{mqtt_port}"
        serve_extra += ["--mqtt", state.mqtt_url, "--wal-dir", str(root / "wal")]
    else:
        # IoT routes need the broker
        opts, serve_extra_opts = topo.serve_options, []
        skip = False
        for item in opts:
            if skip:
                skip = False
            elif item == "--route":
                skip = True
            else:
                serve_extra_opts.append(item)
        topo = Topology(**{**asdict(topo), "serve_options": serve_extra_opts})
    # -- the admin account and its token (the server's first user)
    token_file, password_file = _bootstrap_admin(state.catalog_url, root)
    state.token_file = str(token_file)
    # -- matrixos serve
    http = http_port or free_port()
    state.pg_port = pg_port or free_port()
    state.http_url = f"http://{LOCALHOST}:{http}"
    serve = [
        sys.executable,
        "-m",
        "matrixos.cli",
        "serve",
        "--host",
        LOCALHOST,
        "--port",
        str(http),
    ]
    serve += ["--pg-port", str(state.pg_port), "--compute", state.ray_address]
    serve += serve_extra + topo.serve_options
    log = logs / "serve.log"
    serve_env = {**ray_env, "MATRIXOS_HOME": str(root / "home")}
    state.pids["serve"] = _spawn(serve, serve_env, log)
    _save(state)
    _wait(lambda: _healthy(state.http_url), "matrixos serve", state.pids["serve"], log)
    # psql / psycopg log in as the admin without a password on the command line (PGPASSFILE)
    pgpass = root / "pgpass"
    _write_private(pgpass, f"{LOCALHOST}:{state.pg_port}:*:{ADMIN}:{password_file.read_text()}\n")
    state.env = {
        **env,
        "MATRIXOS_PG_PORT": str(state.pg_port),
        **({"MATRIXOS_MQTT_URL": state.mqtt_url} if state.mqtt_url else {}),
        "PGPASSFILE": str(pgpass),
        "MATRIXOS_COMPUTE": state.ray_address,
        "MATRIXOS_URL": state.http_url,
        "MATRIXOS_TOKEN_FILE": state.token_file,
        **node_env(token),
    }


def _connects(host: str, port: int) -> bool:
    import socket

    with socket.create_connection((host, port), timeout=0.5):
        return True


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
        return bool(resp.status == 200)


def _bootstrap_admin(catalog_url: str, root: Path) -> tuple[Path, Path]:
    """Make the admin account with a token and a password (for SCRAM logins on the PostgreSQL
    wire); write them to ``admin.token`` and ``admin.password`` (mode 0600)."""
    from matrixos.catalog.accounts import Accounts
    from matrixos.catalog.store import SQLCatalog

    password = secrets.token_urlsafe(24)
    catalog = SQLCatalog(catalog_url)
    try:
        accounts = Accounts(catalog)
        accounts.create(ADMIN, "user", admin=True, password=password)
        token = accounts.create_token(ADMIN)
    finally:
        catalog.close()
    token_file, password_file = root / "admin.token", root / "admin.password"
    _write_private(token_file, token)
    _write_private(password_file, password)
    return token_file, password_file


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def cluster_status(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Each recorded process and whether it runs, plus the cluster's addresses."""
    state = load_state(folder)
    if state is None:
        return {"running": False, "processes": {}}
    procs = {name: bool(session_pids(pid)) for name, pid in state.pids.items()}
    pg = PostgresServer.attach(state.postgres_root, state.postgres_port)
    if state.postgres_root:
        procs["postgres"] = pg.postmaster_pid() is not None
    return {
        "running": bool(procs) and all(procs.values()),
        "processes": procs,
        "http": state.http_url,
        "pg_port": state.pg_port,
        "ray": state.ray_address,
        "warehouse": state.warehouse,
        "env_file": str(Path(state.dir) / ENV_FILE),
    }


def cluster_down(folder: str | os.PathLike[str], grace_s: float = 20.0) -> list[int]:
    """Stop every process of the cluster in ``folder`` (server first, S3 last) and remove the
    database's files; return the process ids that were stopped."""
    state = load_state(folder)
    if state is None:
        return []
    order = ["serve", "mosquitto"]
    order += sorted(n for n in state.pids if n.startswith("ray-") and n != "ray-head")
    order += ["ray-head", "s3"]
    stopped = []
    for name in order:
        pid = state.pids.get(name)
        if pid is not None and session_pids(pid):
            stop_sessions([pid], grace_s=grace_s)
            stopped.append(pid)
    if state.postgres_root:
        pg = PostgresServer.attach(state.postgres_root, state.postgres_port)
        pid = pg.postmaster_pid()
        pg.stop()
        if pid is not None:
            stopped.append(pid)
    for temp in state.temp_dirs:
        shutil.rmtree(temp, ignore_errors=True)
    (Path(state.dir) / STATE_FILE).unlink(missing_ok=True)
    return stopped
