"""The Ray nodes ``matrixos compute start`` runs on this machine, and stopping exactly those.

``ray stop`` stops every Ray process of the machine, whoever started it. Instead each node is
``ray start --block`` run as the leader of a session of its own: everything it spawns (GCS,
raylet, agents, workers) belongs to that session. A record of it is kept in
``$MATRIXOS_HOME/ray/nodes/<name>.json`` (process id, address, log file), and
``stop_nodes`` ends those sessions only: SIGTERM to the leader (``ray start --block`` then
stops its own processes), and SIGKILL to whatever of the session is still there after a grace
period. Linux only (sessions are read from ``/proc``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from matrixos.errors import MatrixOSError

READY_LINE = "This command will now block forever"  # printed by `ray start --block` once up


class NodeError(MatrixOSError, RuntimeError):
    """A Ray node could not be started or stopped."""


@dataclass(frozen=True)
class NodeRecord:
    """One node started by ``start_node``: enough to find and stop its processes."""

    name: str  # "head-127.0.0.1-6379" or "worker-127.0.0.1-<pid>"
    pid: int  # `ray start --block`, leader of its session
    head: bool
    address: str  # the cluster's GCS address (host:port)
    node_ip: str
    log: str
    started: float  # time.time()
    ticks: int | None  # the leader's start time (clock ticks since boot): tells a reused pid


def _start_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def running(record: NodeRecord) -> list[int]:
    """The node's live processes; none when its pid now belongs to another process."""
    ticks = _start_ticks(record.pid)
    if ticks is not None and ticks != record.ticks:
        return []  # the pid was reused (e.g. after a reboot): not ours to touch
    return session_pids(record.pid)


def nodes_dir(home: str | os.PathLike[str]) -> Path:
    """``<MATRIXOS_HOME>/ray/nodes``: one JSON record per node started on this machine."""
    return Path(home).expanduser() / "ray" / "nodes"


def records(home: str | os.PathLike[str]) -> list[NodeRecord]:
    """The nodes recorded under ``home`` (workers first, then heads, so workers stop first)."""
    out = []
    for path in sorted(nodes_dir(home).glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(NodeRecord(**json.loads(path.read_text())))
    return sorted(out, key=lambda r: (r.head, r.name))


def session_pids(sid: int) -> list[int]:
    """The live processes of session ``sid`` (zombies excluded)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry))
    return out


def stop_sessions(sids: list[int], grace_s: float = 30.0) -> int:
    """Stop the sessions led by ``sids``: SIGTERM to each leader, then, after ``grace_s``
    seconds at most, SIGKILL to every process still in them. Returns how many processes had
    to be killed."""
    for sid in sids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(sid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(session_pids(s) for s in sids):
        time.sleep(0.2)
    killed = 0
    for sid in sids:
        for pid in session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    for sid in sids:  # reap our own children (a no-op for another process's)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(sid, os.WNOHANG)
    return killed


def start_node(
    args: list[str],
    env: Mapping[str, str],
    home: str | os.PathLike[str],
    *,
    head: bool,
    node_ip: str,
    address: str,
    timeout_s: float = 120.0,
) -> NodeRecord:
    """Run ``args`` (a ``ray start … --block`` command) in a session of its own, detached, with
    its output in ``<nodes_dir>/<name>.log``; wait until the node is up and record it.

    Raises ``NodeError`` with the end of the node's log when it exits or is not up within
    ``timeout_s`` (and then stops whatever it started).
    """
    if "--block" not in args:
        raise ValueError("start_node runs `ray start --block`")
    folder = nodes_dir(home)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    port = address.rsplit(":", 1)[1]
    stem = f"head-{node_ip}-{port}" if head else f"worker-{node_ip}-{time.time_ns()}"
    if head and (folder / f"{stem}.json").exists():
        live = [r for r in records(home) if r.name == stem and running(r)]
        if live:
            raise NodeError(
                f"a head node on {node_ip}:{port} is already running (pid {live[0].pid})",
                hint="stop it first with `matrixos compute stop`",
            )
    log = folder / f"{stem}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while READY_LINE not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_sessions([proc.pid], grace_s=10)
            tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-20:])
            what = f"exited {proc.returncode}" if proc.returncode is not None else "timed out"
            raise NodeError(
                f"`ray start` {what} before the node was up; its log {log} ends with:\n{tail}"
            )
        time.sleep(0.2)
    ticks = _start_ticks(proc.pid)
    record = NodeRecord(stem, proc.pid, head, address, node_ip, str(log), time.time(), ticks)
    tmp = folder / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(folder / f"{stem}.json")
    return record


def stop_nodes(home: str | os.PathLike[str], grace_s: float = 30.0) -> list[NodeRecord]:
    """Stop every node recorded under ``home`` and forget it; returns the records of the nodes
    that were still running. Nodes not started through ``start_node`` are never touched."""
    stopped = []
    for record in records(home):
        if running(record):
            stop_sessions([record.pid], grace_s)
            stopped.append(record)
        (nodes_dir(home) / f"{record.name}.json").unlink(missing_ok=True)
    return stopped
