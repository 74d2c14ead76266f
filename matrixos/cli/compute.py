"""``matrixos compute status|start|stop``: the compute pool from the shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from matrixos.cli.output import OutputFormat, emit_table
from matrixos.errors import ComputeError

#: ``matrixos compute``: its sub-commands.
compute_app = typer.Typer(help="The compute pool (local, or a Ray cluster).", no_args_is_help=True)


@compute_app.command("status")
def compute_status(
    compute: Annotated[
        str | None,
        typer.Option(
            "--compute",
            "-c",
            help="local, ray, ray://host:port or host:port (default: $MATRIXOS_COMPUTE).",
        ),
    ] = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
) -> None:
    """Show the pool: its nodes, their CPUs, GPUs, accelerator, zone, what is in use, and
    each node's file cache (folder, bytes used of its bound).

    With ``ray`` and no ``RAY_ADDRESS`` this starts (and stops) a private runtime.
    """
    import pyarrow as pa

    from matrixos.compute import ComputePool
    from matrixos.config import resolve_settings

    with ComputePool(resolve_settings(compute=compute)) as pool:
        status = pool.status()
        caches = _node_caches() if pool.is_ray else {}
    for n in status["nodes"]:
        n["cache"] = caches.get(n["node_id"])
    if format is OutputFormat.json:
        typer.echo(json.dumps(status, default=str))
        return
    nodes = status["nodes"]
    columns = (
        "address",
        "alive",
        "head",
        "cpus",
        "cpus_free",
        "gpus",
        "gpus_free",
        "accelerator",
        "zone",
    )
    rows = pa.table({c: [n[c] for n in nodes] for c in columns})
    rows = rows.append_column("cache", pa.array([_cache_text(n["cache"]) for n in nodes]))
    if format is OutputFormat.table:
        if status["mode"] == "local":
            where = "local (in-process)"
        else:
            kind = "private Ray runtime" if status["private"] else "Ray cluster"
            where = f"{kind} at {status['address']}, auth: {status['auth']}"
        alive = sum(1 for n in nodes if n["alive"])
        typer.echo(
            f"compute: {where}; {alive} node(s) alive, {status['cpus']:g} CPU(s), "
            f"{status['gpus']:g} GPU(s)"
        )
    emit_table(rows, format, empty="no nodes")


def _node_caches() -> dict[str, dict[str, Any]]:
    """Each node's file cache (its folder, bytes used and bound), asked of the node itself."""
    from matrixos.engine.filecache import node_caches

    try:
        return node_caches(timeout_s=30)
    except Exception:  # a status that cannot see the caches still shows the nodes
        return {}


def _cache_text(cache: dict[str, Any] | None) -> str | None:
    if not cache:
        return None
    from matrixos.engine.dist.explain import format_size as _size

    return f"{_size(cache['bytes'])} of {_size(cache['max_bytes'])} in {cache['dir']}"


@compute_app.command("start")
def compute_start(
    head: Annotated[bool, typer.Option("--head", help="Start the head node.")] = False,
    address: Annotated[
        str | None, typer.Option("--address", help="The head's host:port (worker nodes).")
    ] = None,
    node_ip: Annotated[
        str, typer.Option("--node-ip-address", help="This node's address.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The head's GCS port.")] = 6379,
    num_cpus: Annotated[int | None, typer.Option("--num-cpus")] = None,
    num_gpus: Annotated[int | None, typer.Option("--num-gpus")] = None,
    zone: Annotated[
        str | None, typer.Option("--zone", help="Storage zone (default: $MATRIXOS_ZONE).")
    ] = None,
    temp_dir: Annotated[
        str | None, typer.Option("--temp-dir", help="Ray's session folder (default: /tmp/ray).")
    ] = None,
    block: Annotated[
        bool, typer.Option("--block", help="Stay in the foreground (Ctrl-C stops the node).")
    ] = False,
) -> None:
    """Start a Ray node with MatrixOS's defaults: token auth on (the token in
    ``$MATRIXOS_HOME/ray/auth_token``, created for a head), dashboard off, usage stats off,
    and the node's zone as a resource and label.

    The node runs in the background (its log and a record of its processes in
    $MATRIXOS_HOME/ray/nodes/) until 'matrixos compute stop'. Copy the head's token file
    to every other node (and driver) before starting it there.
    """
    from matrixos._ray_nodes import start_node
    from matrixos.compute import ensure_token, node_env, ray_start_command
    from matrixos.config import resolve_settings

    settings = resolve_settings()
    token = os.environ.get("RAY_AUTH_TOKEN_PATH") or ensure_token(settings.home, create=head)
    if token is None:
        raise ComputeError(
            "no Ray auth token for this node",
            hint="copy the head's $MATRIXOS_HOME/ray/auth_token here (mode 0600) first",
        )
    ray = Path(sys.executable).with_name("ray")
    args = ray_start_command(
        head=head,
        node_ip=node_ip,
        address=address,
        port=port,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        zone=zone if zone is not None else settings.zone,
        temp_dir=temp_dir,
        block=True,  # in the background too: the node's processes stay in its session
        ray=str(ray) if ray.exists() else "ray",
    )
    env = {**os.environ, **node_env(token)}
    if block:
        raise typer.Exit(subprocess.call(args, env=env))
    gcs = f"{node_ip}:{port}" if head else str(address)
    node = start_node(args, env, settings.home, head=head, node_ip=node_ip, address=gcs)
    kind = "head" if head else "worker"
    typer.echo(f"started Ray {kind} node {node_ip} of cluster {gcs} (pid {node.pid})")
    typer.echo(f"log: {node.log}")
    if head:
        typer.echo(f"join it: matrixos compute start --address {gcs} (after copying {token})")
    typer.echo("stop it: matrixos compute stop")


@compute_app.command("stop")
def compute_stop(
    grace: Annotated[
        float,
        typer.Option("--grace", min=0.0, help="Seconds to let a node stop before SIGKILL."),
    ] = 30.0,
) -> None:
    """Stop the Ray nodes that 'matrixos compute start' started on this machine (as recorded
    in $MATRIXOS_HOME/ray/nodes/), and nothing else: unlike 'ray stop', other Ray instances
    on the machine keep running."""
    from matrixos._ray_nodes import stop_nodes
    from matrixos.config import resolve_settings

    stopped = stop_nodes(resolve_settings().home, grace)
    for node in stopped:
        kind = "head" if node.head else "worker"
        typer.echo(f"stopped Ray {kind} node {node.node_ip} of cluster {node.address}")
    if not stopped:
        typer.echo("no node started by `matrixos compute start` is running")
