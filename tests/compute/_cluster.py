"""The Ray test cluster's types, importable by test modules for their annotations
(``tests/compute/conftest.py`` starts the cluster and yields a ``RayCluster``)::

    try:
        from tests.compute._cluster import RayCluster
    except ModuleNotFoundError:
        from _cluster import RayCluster  # type: ignore[no-redef]
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from matrixos.compute import node_env


@dataclass
class Node:
    ip: str
    zone: str
    pid: int  # `ray start --block`, leader of its own session
    temp_dir: str
    agent_port: int  # the dashboard agent's HTTP port (its job API)
    cache_dir: str  # the node's file cache (MATRIXOS_CACHE_DIR of its processes)


@dataclass
class RayCluster:
    """A running cluster: its GCS address, token file and nodes."""

    address: str
    client_port: int
    token_file: str
    root: str
    nodes: list[Node]

    @property
    def gcs_port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def env(self) -> dict[str, str]:
        """Variables a driver process needs to join (token auth on)."""
        return {**node_env(self.token_file), "RAY_ADDRESS": self.address}

    def node(self, zone: str) -> Node:
        return next(n for n in self.nodes if n.zone == zone)

    def node_at(self, ip: str) -> Node:
        return next(n for n in self.nodes if n.ip == ip)

    @staticmethod
    def task_pids(name: str) -> list[int]:
        """Ray worker processes of this machine running task ``name`` (Ray titles them
        ``ray::<name>`` while the task runs)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0", 1)[0].decode(errors="replace").strip()
            except OSError:
                continue
            if cmd == f"ray::{name}":
                out.append(int(entry))
        return out

    @staticmethod
    def waiting_on(pid: int, port: int) -> bool:
        """Whether process ``pid`` has sent a request on a TCP connection to ``port`` on this
        machine that the server has not read yet (the server's end holds unread bytes): it
        waits on that server, for as long as the server is stopped (SIGSTOP)."""
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            return False
        inodes = set()
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[len("socket:[") : -1])
        rows = []  # (local address, remote address, bytes not yet read, inode)
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError), open(table) as f:
                for line in f.readlines()[1:]:
                    fields = line.split()
                    unread = int(fields[4].split(":")[1], 16)
                    rows.append((fields[1], fields[2], unread, fields[9]))
        mine = {
            (local, remote)
            for local, remote, _, inode in rows
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == port
        }
        return any(unread and (remote, local) in mine for local, remote, unread, _ in rows)
