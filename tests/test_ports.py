"""Ports for local servers (Ray nodes, S3, PostgreSQL, the server) come from below the kernel's
ephemeral range: a port from ``bind(0)`` can be taken by any outgoing connection (or a Ray
component binding port 0) before the server binds it, which once killed a Ray head in CI with
"Failed to start the grpc server"."""

from __future__ import annotations

import socket

from matrixos import _ports
from matrixos.cluster.services import free_port as services_free_port
from matrixos.compute import free_port


def _ephemeral_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low, high = (int(x) for x in f.read().split())
    return low, high


def test_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    low, _ = _ephemeral_range()
    ports = [free_port("127.0.0.2") for _ in range(150)] + [services_free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(_ports.LOW <= p < low for p in ports), sorted(ports)[:5] + sorted(ports)[-5:]
    for port in ports[:20]:  # each is free on every address, as a server binding 0.0.0.0 needs
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("0.0.0.0", port))


def test_a_port_held_on_any_loopback_address_is_not_free() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.3", free_port()))
        held.listen()
        port = held.getsockname()[1]
        assert not _ports._bindable(port)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as out,  # an outgoing connection's port
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server,
    ):
        server.bind(("127.0.0.1", 0))
        server.listen()
        out.connect(server.getsockname())
        assert not _ports._bindable(out.getsockname()[1])
