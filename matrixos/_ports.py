"""Ports for the servers MatrixOS starts on one machine (Ray nodes, the test and cluster
services), picked so that nothing else takes them before the server binds.

``bind(port 0)`` hands out a port from the kernel's ephemeral range, and the kernel hands the
same range to every outgoing connection and to every component that binds port 0 (Ray's own
node and object managers among them). Between picking such a port and a server binding it,
any of those can take it: a Ray head then dies with "Failed to start the grpc server".
So ports come from below the ephemeral range instead, where only programs that ask for a
number bind: a random one in ``[LOW, ephemeral start)`` that is free on every address now.
Ray's worker ports (10002-19999 by default) lie below ``LOW``.
"""

from __future__ import annotations

import random
import socket
import threading

__all__ = ["LOW", "free_port"]

LOW = 20000  # above Ray's default worker ports (--min-worker-port 10002 … --max-worker-port 19999)
_HIGH_DEFAULT = 32768  # Linux's default ephemeral range is 32768-60999

_lock = threading.Lock()
_given: set[int] = set()  # handed out by this process: the kernel cannot tell us these are in use


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return _HIGH_DEFAULT
    return low if low > LOW + 1000 else _HIGH_DEFAULT


def _bindable(port: int) -> bool:
    """True when no socket on this machine holds ``port`` (any address, TIME_WAIT included)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that no socket holds now, outside the kernel's ephemeral range, and not
    handed out before by this process (``host`` is kept for callers' clarity: the check covers
    every address, as servers that bind 0.0.0.0, like Ray's GCS, need)."""
    del host
    high = _ephemeral_start()
    rng = random.SystemRandom()
    with _lock:
        for _ in range(1000):
            port = rng.randrange(LOW, high)
            if port not in _given and _bindable(port):
                _given.add(port)
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # the range is full
        sock.bind(("", 0))
        return int(sock.getsockname()[1])
