"""The compute pool: where queries and batch jobs run, in-process or on a Ray cluster.

``Settings.compute`` (``MATRIXOS_COMPUTE``) picks it:

- ``local`` (default): in-process; nothing is started.
- ``ray``: join the cluster named by ``RAY_ADDRESS`` when it is set, else start a private
  one-node Ray runtime on 127.0.0.1 for this process (stopped by ``shutdown()``).
- ``ray://host:port``: a Ray client connection to a cluster's client server.
- ``host:port``: join a cluster by its GCS address (this machine must run a Ray node of it).

Secure by default. Ray runs any code it is sent, and with authentication off its job API and
dashboard agent (port 52365, up even with the dashboard off) run any shell command
(ShadowRay, CVE-2023-48022). So the pool always turns Ray's token authentication on
(``RAY_AUTH_MODE=token``; every Ray gRPC and HTTP endpoint then needs the token), keeps the
dashboard off, and keeps node addresses on loopback unless a cluster address says otherwise.
The token comes from ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` when set, else from
``$MATRIXOS_HOME/ray/auth_token`` (created with ``secrets.token_hex(32)``, mode 0600, for a
private runtime; a token file others can read is refused). Ray reads these variables when it
is imported and when it connects, so they are set before ``import ray``.

Note: Ray 2.x binds its gRPC servers (raylet, object manager, worker ports) on all interfaces
whatever the node address; there is no setting to narrow that. Token authentication is what
keeps them closed to others, which is why it cannot be turned off through MatrixOS.

Nodes advertise what they have as Ray resources and labels: ``CPU``, ``GPU``, the accelerator
type (Ray's own ``accelerator_type:<name>`` resource and ``ray.io/accelerator-type`` label) and
the storage zone (resource ``zone:<name>`` and label ``matrixos.io/zone``; see
``ray_start_command``, which reads ``MATRIXOS_ZONE``).

Example:
    >>> from matrixos.config import Settings
    >>> ComputePool(Settings(compute="local")).status()["mode"]
    'local'
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from matrixos._ports import free_port as free_port
from matrixos.config import ZONE_LABEL as ZONE_LABEL
from matrixos.config import ZONE_RESOURCE_PREFIX as ZONE_RESOURCE_PREFIX
from matrixos.config import ComputeTarget as ComputeTarget
from matrixos.config import parse_compute as parse_compute
from matrixos.errors import ComputeError, ConfigError

if TYPE_CHECKING:
    from matrixos.config import Settings

__all__ = [
    "ZONE_LABEL",
    "ZONE_RESOURCE_PREFIX",
    "ComputePool",
    "ComputeTarget",
    "ensure_token",
    "free_port",
    "node_env",
    "parse_compute",
    "ray_start_command",
    "token_path",
]

log = logging.getLogger(__name__)

_ACCELERATOR_PREFIX = "accelerator_type:"
_ACCELERATOR_LABEL = "ray.io/accelerator-type"
# Variables Ray reads for authentication and node addressing; restored on shutdown.
_RAY_ENV = (
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
    "RAY_USAGE_STATS_ENABLED",
)


# -- the auth token -----------------------------------------------------------------------------
def token_path(home: str | os.PathLike[str]) -> Path:
    """Where MatrixOS keeps the Ray auth token: ``<MATRIXOS_HOME>/ray/auth_token``."""
    return Path(home).expanduser() / "ray" / "auth_token"


def ensure_token(home: str | os.PathLike[str], *, create: bool = True) -> Path | None:
    """The token file under ``home``, created (32 random bytes, hex, mode 0600) when missing
    and ``create``; ``None`` when missing and not ``create``.

    Raises ``ComputeError`` when the file can be read by other users.
    """
    path = token_path(home)
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ComputeError(
            f"the Ray auth token file {path} can be read by other users (mode {mode:o})",
            hint=f"chmod 600 {path}",
        )
    return path


def _read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ComputeError(f"the Ray auth token file {path} is empty")
    return token


# -- `ray start` ---------------------------------------------------------------------------------
def ray_start_command(
    *,
    head: bool,
    node_ip: str = "127.0.0.1",
    address: str | None = None,
    port: int | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    zone: str | None = None,
    temp_dir: str | None = None,
    object_store_memory: int | None = None,
    resources: Mapping[str, float] | None = None,
    block: bool = False,
    ports: Mapping[str, int] | None = None,
    ray: str = "ray",
) -> list[str]:
    """``ray start`` arguments for a MatrixOS node: dashboard off, usage stats off, the node's
    CPUs/GPUs, and its storage zone (``zone``, else ``$MATRIXOS_ZONE``) as the resource
    ``zone:<name>`` and the label ``matrixos.io/zone``.

    Run it with ``node_env(token_file)`` added to the environment (token auth on).
    ``ports`` adds ``--<name>=<port>`` options (e.g. ``dashboard-agent-listen-port``), needed
    when several nodes share one machine. ``resources`` adds custom resources (e.g.
    ``{"accelerator_type:H100": 1}`` for a node whose GPUs Ray cannot detect).

    Example:
        >>> ray_start_command(head=True, node_ip="127.0.0.2", port=6380, zone="a")[:4]
        ['ray', 'start', '--head', '--port=6380']
    """
    args = [ray, "start"]
    if head:
        args += ["--head", f"--port={port if port is not None else 6379}"]
        args += ["--include-dashboard=false", "--dashboard-host=127.0.0.1"]
    else:
        if not address:
            raise ConfigError("a worker node needs the head's address (host:port)")
        args.append(f"--address={address}")
    args += [f"--node-ip-address={node_ip}", "--disable-usage-stats"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    zone = zone if zone is not None else os.environ.get("MATRIXOS_ZONE")
    custom = dict(resources or {})
    if zone:
        _check_zone(zone)
        custom[ZONE_RESOURCE_PREFIX + zone] = 1
    if custom:
        args.append("--resources=" + json.dumps(custom))
    if zone:
        args.append(f"--labels={ZONE_LABEL}={zone}")
    if temp_dir:
        args.append(f"--temp-dir={temp_dir}")
    if object_store_memory:
        args.append(f"--object-store-memory={object_store_memory}")
    for name, value in (ports or {}).items():
        args.append(f"--{name}={value}")
    if block:
        args.append("--block")
    return args


def node_env(token_file: str | os.PathLike[str]) -> dict[str, str]:
    """Environment variables for ``ray start`` and drivers of a token-protected cluster."""
    return {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
        "RAY_USAGE_STATS_ENABLED": "0",
    }


def _check_zone(zone: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", zone):
        raise ConfigError(f"zone {zone!r}: use letters, digits, '.', '_' and '-'")


# -- the process's Ray connection -------------------------------------------------------------
@dataclass
class _Runtime:
    """The one Ray connection of this process (Ray is process-global), shared by pools."""

    target: ComputeTarget
    owned: bool  # made by MatrixOS (else the application had called ray.init itself)
    users: int = 0
    saved_env: dict[str, str | None] = field(default_factory=dict)
    temp_dir: str | None = None
    saved_cluster_flag: bool | None = None


_LOCK = threading.RLock()
_RUNTIME: _Runtime | None = None


class ComputePool:
    """Where work runs: in-process (``local``) or on Ray. Started on first use.

    ``Lakehouse.compute`` gives the session's pool; ``Lakehouse.close()`` shuts it down (a
    private runtime stops with it). Several pools of one process share its Ray connection.

    Example:
        >>> from matrixos.config import Settings
        >>> pool = ComputePool(Settings(compute="local")).start()
        >>> pool.num_cpus() >= 1
        True
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.target = parse_compute(settings.compute)
        self._started = False

    def __repr__(self) -> str:
        where = self.target.address or ("private" if self.target.private else "in-process")
        return f"ComputePool({self.target.kind}, {where})"

    def __enter__(self) -> ComputePool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def kind(self) -> Literal["local", "ray"]:
        return self.target.kind

    @property
    def is_ray(self) -> bool:
        return self.target.kind == "ray"

    @property
    def started(self) -> bool:
        return self._started

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> ComputePool:
        """Connect to (or start) the pool; idempotent. Raises ``ComputeError``."""
        global _RUNTIME
        if self._started:
            return self
        if not self.is_ray:
            self._started = True
            return self
        with _LOCK:
            if self._started:  # another thread of this session got here first
                return self
            rt = _RUNTIME
            if rt is None:
                rt = _connect(self.target, self.settings)
                _RUNTIME = rt
            elif rt.target != self.target and rt.owned:
                raise ComputeError(
                    f"this process is already connected to Ray ({_describe(rt.target)}); "
                    f"cannot also use {_describe(self.target)}",
                    hint="Ray allows one cluster per process: close the other sessions first",
                )
            rt.users += 1
            self._started = True
        return self

    def shutdown(self) -> None:
        """Release the pool; the last user of a runtime MatrixOS started or joined ends it."""
        global _RUNTIME
        if not self.is_ray:
            self._started = False
            return
        with _LOCK:
            if not self._started:
                return
            self._started = False
            rt = _RUNTIME
            if rt is None:
                return
            rt.users -= 1
            if rt.users > 0:
                return
            _RUNTIME = None
            if rt.owned:
                _disconnect(rt)

    # -- what the pool has ----------------------------------------------------------------
    def num_cpus(self) -> int:
        """CPUs of the pool's live nodes (this machine's for ``local``)."""
        if not self.is_ray:
            return os.cpu_count() or 1
        self.start()
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 0)))

    def status(self) -> dict[str, Any]:
        """The pool and its nodes.

        Returns ``{"mode", "address", "private", "auth", "cpus", "gpus", "nodes": [...]}``;
        each node: ``node_id, address, alive, head, cpus, gpus, accelerator, zone,
        cpus_used, cpus_free, gpus_used, gpus_free, memory_bytes``.
        """
        if not self.is_ray:
            node = {
                "node_id": None,
                "address": "in-process",
                "alive": True,
                "head": True,
                "cpus": float(os.cpu_count() or 1),
                "gpus": 0.0,
                "accelerator": None,
                "zone": self.settings.zone,
                "cpus_used": None,
                "cpus_free": None,
                "gpus_used": None,
                "gpus_free": None,
                "memory_bytes": None,
            }
            return {
                "mode": "local",
                "address": None,
                "private": False,
                "auth": None,
                "cpus": node["cpus"],
                "gpus": 0.0,
                "nodes": [node],
            }
        self.start()
        nodes = _ray_nodes()
        alive = [n for n in nodes if n["alive"]]
        return {
            "mode": "ray",
            "address": self.target.address or _private_address(),
            "private": self.target.private,
            "auth": os.environ.get("RAY_AUTH_MODE", "token"),
            "cpus": sum(n["cpus"] for n in alive),
            "gpus": sum(n["gpus"] for n in alive),
            "nodes": nodes,
        }


def _describe(target: ComputeTarget) -> str:
    return "a private runtime" if target.private else str(target.address)


def _private_address() -> str | None:
    import ray

    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:
        return None


def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    try:
        from ray._private.state import available_resources_per_node

        free: dict[str, dict[str, float]] = available_resources_per_node()
    except Exception:  # Ray client mode has no per-node view
        free = {}
    out = []
    for n in ray.nodes():
        res: dict[str, float] = n.get("Resources") or {}
        labels: dict[str, str] = n.get("Labels") or {}
        alive = bool(n.get("Alive"))
        zone = labels.get(ZONE_LABEL) or next(
            (k[len(ZONE_RESOURCE_PREFIX) :] for k in res if k.startswith(ZONE_RESOURCE_PREFIX)),
            None,
        )
        accel = labels.get(_ACCELERATOR_LABEL) or next(
            (k[len(_ACCELERATOR_PREFIX) :] for k in res if k.startswith(_ACCELERATOR_PREFIX)),
            None,
        )
        cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
        avail = free.get(n["NodeID"]) if alive else None
        cpus_free = float(avail.get("CPU", 0)) if avail is not None else None
        gpus_free = float(avail.get("GPU", 0)) if avail is not None else None
        out.append(
            {
                "node_id": n["NodeID"],
                "address": n.get("NodeManagerAddress"),
                "alive": alive,
                "head": "node:__internal_head__" in res,
                "cpus": cpus,
                "gpus": gpus,
                "accelerator": accel,
                "zone": zone,
                "cpus_used": cpus - cpus_free if cpus_free is not None else None,
                "cpus_free": cpus_free,
                "gpus_used": gpus - gpus_free if gpus_free is not None else None,
                "gpus_free": gpus_free,
                "memory_bytes": int(res["memory"]) if "memory" in res else None,
            }
        )
    out.sort(key=lambda n: (not n["alive"], not n["head"], n["address"] or ""))
    return out


def _set_env(saved: dict[str, str | None], name: str, value: str) -> None:
    if name not in saved:
        saved[name] = os.environ.get(name)
    os.environ[name] = value


def _restore_env(saved: Mapping[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _configure_auth(
    target: ComputeTarget, settings: Settings, saved: dict[str, str | None]
) -> None:
    """Token auth on, with a token Ray can find, before Ray is imported or connects."""
    mode = os.environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode and mode != "token":
        raise ComputeError(
            f"RAY_AUTH_MODE={mode!r}: MatrixOS runs Ray only with token authentication",
            hint="unset RAY_AUTH_MODE (or set it to 'token'); without authentication anyone "
            "who can reach a Ray port can run commands on the machine",
        )
    _set_env(saved, "RAY_AUTH_MODE", "token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return  # the application's own token for its cluster
    path = ensure_token(settings.home, create=target.private)
    if path is None:
        if (Path.home() / ".ray" / "auth_token").exists():
            return  # Ray's default location
        raise ComputeError(
            f"no auth token for the Ray cluster at {target.address}",
            hint=f"put the cluster's token in {token_path(settings.home)} (mode 0600), or set "
            "RAY_AUTH_TOKEN_PATH / RAY_AUTH_TOKEN",
        )
    _set_env(saved, "RAY_AUTH_TOKEN", _read_token(path))


def _refresh_ray_config() -> None:
    """Make an already-imported Ray see the variables just set (it reads them on import)."""
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _connect(target: ComputeTarget, settings: Settings) -> _Runtime:
    already_imported = "ray" in sys.modules
    if already_imported:
        import ray

        if ray.is_initialized():
            # The application connected Ray itself: use it as is, never shut it down.
            return _Runtime(target=target, owned=False)
    rt = _Runtime(target=target, owned=True)
    try:
        _configure_auth(target, settings, rt.saved_env)
        _set_env(rt.saved_env, "RAY_USAGE_STATS_ENABLED", "0")
        if target.private:
            # Keeps Ray on 127.0.0.1 instead of the interface address; a private runtime
            # never takes other nodes, which this also forbids.
            _set_env(rt.saved_env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        import ray
        from ray._private import ray_constants

        if already_imported:
            _refresh_ray_config()
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "namespace": "matrixos",
            "configure_logging": False,
        }
        if target.private:
            # Read on import: set for an already-imported Ray too (restored on shutdown).
            rt.saved_cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
            ray_constants.ENABLE_RAY_CLUSTER = False
            # A short private folder: Ray's socket paths must stay under 108 bytes, and a
            # shared /tmp/ray would let `ray.init()` elsewhere find and join this runtime.
            rt.temp_dir = tempfile.mkdtemp(prefix="mx-ray-", dir=_short_tmp())
            kwargs.update(address="local", _node_ip_address="127.0.0.1", _temp_dir=rt.temp_dir)
            if settings.zone:
                _check_zone(settings.zone)
                kwargs["resources"] = {ZONE_RESOURCE_PREFIX + settings.zone: 1}
                kwargs["labels"] = {ZONE_LABEL: settings.zone}
        else:
            kwargs["address"] = target.address
            if target.node_ip:
                kwargs["_node_ip_address"] = target.node_ip
        # The client server starts a Python process per connection, which on a busy machine
        # can take longer than the ~30 s a Ray client waits: try a client target 3 times.
        attempts = 3 if target.client else 1
        try:
            for attempt in range(attempts):
                try:
                    ray.init(**kwargs)
                    break
                except ConnectionError:
                    if attempt + 1 == attempts:
                        raise
                    with contextlib.suppress(Exception):
                        ray.shutdown()
        except Exception as e:
            raise ComputeError(
                f"cannot start or reach Ray ({_describe(target)}): {e}",
                hint="check the address and that this process has the cluster's auth token",
            ) from e
    except BaseException:
        _disconnect(rt)
        raise
    _register_exit_hook()
    return rt


@functools.cache
def _register_exit_hook() -> None:
    # Runs before Ray's own exit hook (registered earlier, when ray was imported): a process
    # that never closed its session still stops its private runtime and removes its folder.
    atexit.register(_shutdown_at_exit)


def _shutdown_at_exit() -> None:
    global _RUNTIME
    with _LOCK:
        rt, _RUNTIME = _RUNTIME, None
    if rt is not None and rt.owned:
        _disconnect(rt)


def _disconnect(rt: _Runtime) -> None:
    if "ray" in sys.modules:
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        if rt.saved_cluster_flag is not None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = rt.saved_cluster_flag
    _restore_env(rt.saved_env)
    if rt.temp_dir:
        shutil.rmtree(rt.temp_dir, ignore_errors=True)


def _short_tmp() -> str | None:
    """``/tmp`` where it exists: pytest's and macOS's temp folders make socket paths too long."""
    return "/tmp" if os.path.isdir("/tmp") else None
