"""The cluster's topology, read from ``docker/compose.yaml``: the one definition that both docker
and ``matrixos cluster up`` start.

Services are found by their ``io.matrixos.role`` label; the launcher takes from them the CPU
worker count (``deploy.replicas``), each node's CPUs (``deploy.resources.limits.cpus``), the GPU
worker's GPUs (its NVIDIA device reservation) and accelerator label, the warehouse's bucket and
prefix (``MATRIXOS_WAREHOUSE``) and the server's options (its ``command`` after ``serve``).
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from matrixos.errors import ConfigError

__all__ = ["Topology", "default_compose_file", "read_topology"]

ROLE_LABEL = "io.matrixos.role"
ROLES = ("s3", "catalog-db", "mqtt", "ray-head", "ray-worker", "ray-gpu-worker", "server")
# Options of `matrixos serve` the launcher sets itself (local addresses and ports).
_LOCAL_OPTIONS = {"--host", "--port", "--pg-port", "--compute", "--mqtt", "--wal-dir"}


@dataclass(frozen=True)
class Topology:
    """What ``cluster up`` starts (see the module's docstring)."""

    source: str
    workers: int
    worker_cpus: int
    head_cpus: int
    gpu_workers: int
    gpu_cpus: int
    gpus_per_worker: int
    accelerator: str | None
    bucket: str
    prefix: str
    mqtt: bool
    serve_options: list[str] = field(default_factory=list)


def default_compose_file() -> Path:
    """``$MATRIXOS_COMPOSE_FILE``, else ``docker/compose.yaml`` of the source checkout."""
    env = os.environ.get("MATRIXOS_COMPOSE_FILE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"


def _cpus(service: dict[str, Any], default: int = 1) -> int:
    limits = (service.get("deploy") or {}).get("resources", {}).get("limits", {})
    cpus = limits.get("cpus")
    return max(1, math.ceil(float(cpus))) if cpus is not None else default


def _server_command(command: list[Any] | str) -> list[str]:
    """The words of the service's command from ``matrixos serve`` on (a ``sh -c`` script is
    split as the shell would; what runs before the server, such as joining Ray, is dropped)."""
    words = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if len(words) >= 3 and words[0] in ("sh", "bash") and words[1] == "-c":
        words = shlex.split(words[2])
    for i in range(len(words) - 1):
        if words[i].endswith("matrixos") and words[i + 1] == "serve":
            return words[i:]
    return words


def read_topology(path: str | os.PathLike[str] | None = None) -> Topology:
    """Read the topology from a compose file (default: :func:`default_compose_file`)."""
    import yaml

    source = Path(path) if path is not None else default_compose_file()
    try:
        data = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(
            f"cannot read the cluster topology from {source}: {e}",
            hint="give --compose PATH (docker/compose.yaml of the MatrixOS repository) or set "
            "MATRIXOS_COMPOSE_FILE",
        ) from e
    services: dict[str, dict[str, Any]] = {}
    for name, svc in (data.get("services") or {}).items():
        role = (svc.get("labels") or {}).get(ROLE_LABEL)
        if role:
            services[role] = {**svc, "name": name}
    missing = [r for r in ROLES if r not in services and r != "mqtt"]
    if missing:
        raise ConfigError(f"{source}: no service labelled {ROLE_LABEL} = {', '.join(missing)}")
    server = services["server"]
    env = server.get("environment") or {}
    warehouse = urlparse(str(env.get("MATRIXOS_WAREHOUSE", "s3://warehouse/wh")))
    command = _server_command(server.get("command") or [])
    options = command[command.index("serve") + 1 :] if "serve" in command else []
    kept: list[str] = []
    skip = False
    for item in options:
        if skip:
            skip = False
            continue
        if item in _LOCAL_OPTIONS:
            skip = True
            continue
        kept.append(item)
    gpu = services["ray-gpu-worker"]
    reservations = (gpu.get("deploy") or {}).get("resources", {}).get("reservations", {})
    devices = reservations.get("devices") or []
    gpus = sum(int(d.get("count", 1)) for d in devices if "gpu" in d.get("capabilities", []))
    return Topology(
        source=str(source),
        workers=int((services["ray-worker"].get("deploy") or {}).get("replicas", 1)),
        worker_cpus=_cpus(services["ray-worker"]),
        head_cpus=_cpus(services["ray-head"]),
        gpu_workers=int((gpu.get("deploy") or {}).get("replicas", 1)),
        gpu_cpus=_cpus(gpu),
        gpus_per_worker=max(1, gpus),
        accelerator=(gpu.get("labels") or {}).get("io.matrixos.accelerator"),
        bucket=warehouse.netloc,
        prefix=warehouse.path.strip("/"),
        mqtt="mqtt" in services and "--mqtt" in command,
        serve_options=kept,
    )
