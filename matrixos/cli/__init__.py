"""The ``matrixos`` command line: SQL, ingest and catalog listings over one warehouse.

Every ``MatrixOSError`` becomes ``error: <message>`` on stderr and exit status 1, never a
traceback; usage errors exit 2. Heavy modules (pyarrow, the engine, rich) are imported inside
the commands so that ``matrixos --help`` stays quick.

This package builds the app from its command modules, which import only ``common`` and
``output`` (and the layers below), never this package:

    output ← common ← sql, tables, ai, compute, demo, accounts, usage ← cli (this app)

Example:
    $ matrixos --warehouse ./wh sql "SELECT 1 AS one" --format json
    [{"one": 1}]
"""

from __future__ import annotations

import os
import sys

import typer

from matrixos.cli import accounts, ai, cluster, compute, demo, jobs, lineage, sql, tables, usage
from matrixos.cli.common import HELP, fail, hoist_global_options, root
from matrixos.errors import MatrixOSError

__all__ = ["app", "main"]

#: The Typer app: ``matrixos <command>``.
app = typer.Typer(
    name="matrixos",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.callback()(root)
# In the order `matrixos --help` lists them.
app.command()(sql.sql)
app.command()(tables.ingest)
app.command()(tables.tables)
app.command()(tables.history)
app.command()(tables.describe)
app.command()(demo.demo)
app.command()(sql.serve)
app.command()(ai.search)
app.add_typer(ai.rag_app, name="rag")
app.add_typer(compute.compute_app, name="compute")
app.add_typer(jobs.jobs_app, name="jobs")
app.command("reserve")(jobs.reserve)
app.add_typer(cluster.cluster_app, name="cluster")
app.add_typer(accounts.accounts_app, name="accounts")
app.add_typer(accounts.tokens_app, name="tokens")
app.command()(usage.usage)
app.command()(lineage.lineage)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``matrixos`` script (``argv``: the arguments, default ``sys.argv``)."""
    args = hoist_global_options(sys.argv[1:] if argv is None else list(argv))
    try:
        app(args=args, prog_name="matrixos")
    except MatrixOSError as e:
        fail(e.message, hint=e.hint)
    except BrokenPipeError:
        # The reader went away (`matrixos sql … | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:
        # A bug, not a user error: say so plainly; the traceback is one variable away.
        if os.environ.get("MATRIXOS_DEBUG"):
            raise
        fail(
            f"internal error: {type(e).__name__}: {e}",
            hint="this is a bug in MatrixOS; rerun with MATRIXOS_DEBUG=1 for the traceback",
        )
