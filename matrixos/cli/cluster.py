"""``matrixos cluster up|status|down``: the docker/compose.yaml topology as local processes."""

from __future__ import annotations

import json
from typing import Annotated

import typer

cluster_app = typer.Typer(
    help="Run the docker/compose.yaml topology (S3, PostgreSQL, Ray head and workers, the "
    "server) as local processes on loopback addresses.",
    no_args_is_help=True,
)

Dir = Annotated[str, typer.Option("--dir", help="The cluster's folder (state, logs, data).")]


@cluster_app.command("up")
def up(
    folder: Dir = "./cluster",
    compose: Annotated[
        str | None,
        typer.Option(
            "--compose", help="The compose file (default: docker/compose.yaml).", show_default=False
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="CPU workers (default: its replicas).")
    ] = None,
    gpu_workers: Annotated[
        int | None,
        typer.Option("--gpu-workers", min=0, help="Fake-GPU workers (default: its replicas)."),
    ] = None,
    port: Annotated[int, typer.Option("--port", min=0, help="HTTP port (0: a free one).")] = 0,
    pg_port: Annotated[
        int, typer.Option("--pg-port", min=0, help="PostgreSQL wire port (0: a free one).")
    ] = 0,
) -> None:
    """Start the cluster; print where it is and how to reach it."""
    from matrixos.cluster.launcher import ENV_FILE, cluster_up

    state = cluster_up(
        folder,
        compose=compose,
        workers=workers,
        gpu_workers=gpu_workers,
        http_port=port,
        pg_port=pg_port,
    )
    typer.echo(f"cluster up in {state.dir} (topology: {state.topology})")
    typer.echo(f"  server:    {state.http_url}  (psql: host=127.0.0.1 port={state.pg_port})")
    typer.echo(
        f"  ray:       {state.ray_address} "
        f"({sum(name.startswith('ray-') for name in state.pids)} nodes)"
    )
    typer.echo(f"  warehouse: {state.warehouse}  (S3 at {state.s3_endpoint})")
    typer.echo(f"  admin token: {state.token_file}")
    typer.echo(
        f"use it: source {state.dir}/{ENV_FILE}; stop it: matrixos cluster down --dir {folder}"
    )


@cluster_app.command("status")
def status(
    folder: Dir = "./cluster",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which of the cluster's processes run (exit 1 when any is down)."""
    from matrixos.cluster.launcher import cluster_status

    info = cluster_status(folder)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        if not info["processes"]:
            typer.echo(f"no cluster in {folder}")
        for name, alive in info["processes"].items():
            typer.echo(f"{name:16} {'running' if alive else 'STOPPED'}")
        if info.get("http"):
            typer.echo(f"server {info['http']}, ray {info['ray']}, warehouse {info['warehouse']}")
    if not info["running"]:
        raise typer.Exit(1)


@cluster_app.command("down")
def down(folder: Dir = "./cluster") -> None:
    """Stop every process of the cluster (and its database)."""
    from matrixos.cluster.launcher import cluster_down

    stopped = cluster_down(folder)
    typer.echo(f"stopped {len(stopped)} processes" if stopped else f"no cluster ran in {folder}")
