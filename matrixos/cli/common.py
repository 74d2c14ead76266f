"""What every ``matrixos`` sub-command shares: the global options, the session they open,
and how a failure is reported.

The command modules (``sql``, ``tables``, ``ai``, ``compute``, ``demo``) import this module and
``output``, never the package: ``matrixos/cli/__init__.py`` builds the app and registers them.
The session (pyarrow, DuckDB, the catalog) is imported inside ``connect`` so that
``matrixos --help`` stays quick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from matrixos import __version__
from matrixos.cli.output import console

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

#: The app's one-line description (``matrixos --help``).
HELP = "MatrixOS: a lakehouse of Delta tables you query with SQL in any dialect."


@dataclass
class Options:
    """The global options, kept on the Typer context for the sub-command."""

    warehouse: str | None = None
    catalog_url: str | None = None


def options(ctx: typer.Context) -> Options:
    """The global options given before (or after) the sub-command."""
    return ctx.obj if isinstance(ctx.obj, Options) else Options()


def connect(ctx: typer.Context, *, create: bool = False) -> Lakehouse:
    """A session on the warehouse of the global options. Only commands that write pass
    ``create=True``: a reading command on a mistyped ``--warehouse`` says that no warehouse
    is there instead of creating an empty one and listing its "(no tables)"."""
    from matrixos.session import connect as open_session

    opts = options(ctx)
    return open_session(opts.warehouse, catalog_url=opts.catalog_url, create=create)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"matrixos {__version__}")
        raise typer.Exit()


def root(
    ctx: typer.Context,
    warehouse: Annotated[
        str | None,
        typer.Option(
            "--warehouse",
            "-w",
            envvar="MATRIXOS_WAREHOUSE",
            show_envvar=True,
            help="Warehouse root: a folder or s3://bucket/prefix. Default: ./warehouse. "
            "May also follow the command.",
        ),
    ] = None,
    catalog_url: Annotated[
        str | None,
        typer.Option(
            "--catalog-url",
            envvar="MATRIXOS_CATALOG_URL",
            show_envvar=True,
            # The URL may hold a password: never echo its value in --help.
            show_default=False,
            help="Catalog URL (sqlite:///…, postgresql://…, s3://…). Default: the warehouse's "
            "own (SQLite in a local one, a commit log in <warehouse>/_catalog/ in a bucket).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """MatrixOS: a lakehouse of Delta tables you query with SQL in any dialect."""
    ctx.obj = Options(warehouse=warehouse, catalog_url=catalog_url)


# The global options are also taken after the sub-command (`matrixos tables --warehouse X`, as
# the README's examples read): they are moved in front of it before parsing, keeping their
# order, so the last one given wins as usual.
GLOBAL_FLAGS = ("--warehouse", "-w", "--catalog-url")


def hoist_global_options(argv: list[str]) -> list[str]:
    """``argv`` with every global option (and its value) moved to the front.

    Example:
        >>> hoist_global_options(["tables", "--warehouse", "wh", "-f", "json"])
        ['--warehouse', 'wh', 'tables', '-f', 'json']
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # what follows is positional
            rest += argv[i:]
            break
        if arg in GLOBAL_FLAGS and i + 1 < len(argv):
            front += argv[i : i + 2]
            i += 2
            continue
        if arg.startswith(("--warehouse=", "--catalog-url=")):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def split_values(values: list[str] | None) -> list[str] | None:
    """A repeatable option's values, each also split at commas; None when none was given.

    Example:
        >>> split_values(["a,b", " c "])
        ['a', 'b', 'c']
    """
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


# user:password@ in URLs (catalog URLs, endpoints) that an error message might quote.
_SECRET_IN_URL = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://[^/\s:@]*):[^@\s/]+@")


def redact(text: str) -> str:
    """``text`` with the passwords of the URLs in it replaced by ``***``.

    Example:
        >>> redact("cannot reach postgresql://mx:s3cret@db:5432/cat")
        'cannot reach postgresql://mx:***@db:5432/cat'
    """
    return _SECRET_IN_URL.sub(r"\g<scheme>:***@", text)


def fail(message: str, *, hint: str | None = None, code: int = 1) -> NoReturn:
    """Print ``error: <message>`` (and the hint) on stderr and exit with ``code``."""
    from rich.markup import escape

    err = console(stderr=True)
    err.print(f"[bold red]error:[/bold red] [red]{escape(redact(message))}[/red]", highlight=False)
    if hint:
        err.print(f"[dim]hint: {escape(redact(hint))}[/dim]", highlight=False)
    raise SystemExit(code)
