"""``matrixos accounts …`` and ``matrixos tokens …``: who may use a shared warehouse.

Run where the warehouse's catalog is reachable, with its credentials: these commands act as the
catalog's owner (an admin). Grants are given in SQL (``matrixos sql "GRANT …"``).

Example:
    $ matrixos accounts create alice --admin
    $ echo 's3cret' | matrixos accounts create bob --password-stdin
    $ matrixos tokens create bob --expires-in 30d
    mxt_3f2a…_…            (shown once: keep it)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from matrixos.cli.common import connect, fail
from matrixos.cli.output import OutputFormat, console, emit_table

if TYPE_CHECKING:
    from matrixos.session import Lakehouse

accounts_app = typer.Typer(
    help="Users, groups and service principals of the warehouse.", no_args_is_help=True
)
tokens_app = typer.Typer(
    help="API tokens: create (shown once), list, revoke.", no_args_is_help=True
)


_LABELS = {"user": "USER", "group": "GROUP", "service": "SERVICE PRINCIPAL"}


def _done(message: str) -> None:
    console(stderr=True).print(message, markup=False, highlight=False)


@contextmanager
def _audited(lh: Lakehouse, action: str, obj: str) -> Iterator[list[str]]:
    """Run a change and record it (done or failed) in system.access.audit; a detail appended
    to the yielded list (a token's id) goes into the row's object."""
    from matrixos.catalog.audit import AuditEvent, AuditLog, outcome_of

    detail: list[str] = []
    failure: BaseException | None = None
    try:
        yield detail
    except BaseException as e:
        failure = e
        raise
    finally:
        event = AuditEvent(
            lh.principal.name, action, " ".join([obj, *detail]), outcome_of(failure), "cli"
        )
        AuditLog(lh.service).record(event)


@accounts_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The account's name.")],
    admin: Annotated[
        bool, typer.Option("--admin", help="May do anything, grant anything.")
    ] = False,
    group: Annotated[bool, typer.Option("--group", help="A group of accounts.")] = False,
    service: Annotated[
        bool, typer.Option("--service", help="A service principal (a program's account).")
    ] = False,
    password_stdin: Annotated[
        bool,
        typer.Option("--password-stdin", help="Read a password (its first line) from stdin."),
    ] = False,
) -> None:
    """Create a user (or with --group a group, with --service a service principal)."""
    from matrixos.catalog.accounts import Accounts

    if group and service:
        fail("--group and --service exclude each other", code=2)
    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            fail("--password-stdin: stdin held no password", code=2)
    kind = "group" if group else "service" if service else "user"
    with connect(ctx, create=True) as lh, _audited(lh, f"CREATE {_LABELS[kind]}", name):
        Accounts(lh.catalog).create(name, kind, admin=admin, password=password)
    _done(f"created {kind} {name}" + (" (admin)" if admin else ""))


@accounts_app.command("list")
def list_accounts(
    ctx: typer.Context,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """List the accounts: name, kind, admin, groups, whether a password is set, created."""
    import pyarrow as pa

    from matrixos.catalog.accounts import Accounts

    with connect(ctx) as lh:
        accounts = Accounts(lh.catalog)
        infos = accounts.list()
        members = lh.catalog.list_members()
        passwords = [accounts.scram_verifier(a.name) is not None for a in infos]
    rows = pa.table(
        {
            "name": pa.array([a.name for a in infos], pa.string()),
            "kind": pa.array([a.kind for a in infos], pa.string()),
            "admin": pa.array([a.admin for a in infos], pa.bool_()),
            "groups": pa.array(
                [",".join(sorted(g for g, m in members if m == a.name)) for a in infos],
                pa.string(),
            ),
            "password": pa.array(passwords, pa.bool_()),
            "created_at": pa.array([a.created_at for a in infos], pa.timestamp("s", tz="UTC")),
        }
    )
    emit_table(rows, format, empty="no accounts")


@accounts_app.command("drop")
def drop(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="The account to drop.")]
) -> None:
    """Drop an account with its memberships, grants, tokens and password."""
    from matrixos.catalog.accounts import Accounts

    with connect(ctx) as lh, _audited(lh, "DROP ACCOUNT", name):
        Accounts(lh.catalog).drop(name)
    _done(f"dropped {name}")


@accounts_app.command("add-member")
def add_member(
    ctx: typer.Context,
    group: Annotated[str, typer.Argument(help="The group.")],
    member: Annotated[str, typer.Argument(help="The account to put in it.")],
) -> None:
    """Put an account in a group: it gets the group's grants."""
    from matrixos.catalog.accounts import Accounts

    with connect(ctx) as lh, _audited(lh, "ALTER GROUP", group):
        Accounts(lh.catalog).add_member(group, member)
    _done(f"{member} is in {group}")


@tokens_app.command("create")
def create_token(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The user or service principal.")],
    expires_in: Annotated[
        str | None,
        typer.Option("--expires-in", help="Lifetime: 90s, 15m, 12h, 30d, 2w. Default: none."),
    ] = None,
) -> None:
    """Create an API token and print it: the only time it is shown."""
    from matrixos.catalog.accounts import Accounts

    with connect(ctx) as lh, _audited(lh, "CREATE TOKEN", name) as detail:
        token = Accounts(lh.catalog).create_token(name, expires_in)
        detail.append(token.split("_", 2)[1])  # its id: the secret is never recorded
    typer.echo(token)
    _done("keep this token now: only its hash is stored, it cannot be shown again")


@tokens_app.command("list")
def list_tokens(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this account's tokens.", show_default=False)
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """List tokens (never their secrets): id, account, created, expires, revoked, last used."""
    import pyarrow as pa

    from matrixos.catalog.accounts import Accounts

    with connect(ctx) as lh:
        infos = Accounts(lh.catalog).tokens(name)
    stamp = pa.timestamp("s", tz="UTC")
    rows = pa.table(
        {
            "id": pa.array([t.id for t in infos], pa.string()),
            "account": pa.array([t.account for t in infos], pa.string()),
            "created_at": pa.array([t.created_at for t in infos], stamp),
            "expires_at": pa.array([t.expires_at for t in infos], stamp),
            "revoked_at": pa.array([t.revoked_at for t in infos], stamp),
            "last_used_at": pa.array([t.last_used_at for t in infos], stamp),
            "last_used_from": pa.array([t.last_used_from for t in infos], pa.string()),
        }
    )
    emit_table(rows, format, empty="no tokens")


@tokens_app.command("revoke")
def revoke_token(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(help="The token's id.")]
) -> None:
    """Revoke a token: the next request that carries it is refused."""
    from matrixos.catalog.accounts import Accounts

    with connect(ctx) as lh, _audited(lh, "REVOKE TOKEN", token_id):
        Accounts(lh.catalog).revoke_token(token_id)
    _done(f"revoked token {token_id}")


# -- prepaid credit (degrees; see matrixos.catalog.billing) ---------------------------------
@accounts_app.command("credit")
def credit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The account to credit.")],
    degrees: Annotated[
        str, typer.Option("--degrees", "-d", help="Degrees to add (1 = 312 TFLOPS x 1 h).")
    ],
    note: Annotated[str | None, typer.Option("--note", help="Why (kept in the ledger).")] = None,
) -> None:
    """Add a prepaid package of compute degrees to an account."""
    from matrixos.catalog.billing import Billing

    with connect(ctx) as lh, _audited(lh, "CREDIT", name):
        balance = Billing(lh.catalog).credit(name, degrees, by=lh.principal, note=note)
    _done(f"credited {name} with {degrees} degrees; balance {_degrees(balance)}")


@accounts_app.command("balance")
def balance(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="One account (default: all).")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """Credited, consumed and left, in degrees, with the 50/75/90 % alerts recorded."""
    import pyarrow as pa

    from matrixos.catalog.billing import Billing

    with connect(ctx) as lh:
        billing = Billing(lh.catalog)
        if name is not None:
            lh.catalog.get_account(name)  # AccountNotFound for a mistyped name
        sums = [billing.summary(name)] if name is not None else billing.summaries()
        alerts = {
            s.account: ",".join(f"{a.threshold}%" for a in billing.alerts(s.account)) for s in sums
        }
    dec = pa.decimal128(38, 9)
    rows = pa.table(
        {
            "account": pa.array([s.account for s in sums], pa.string()),
            "credited": pa.array([s.credited for s in sums], dec),
            "consumed": pa.array([s.consumed for s in sums], dec),
            "balance": pa.array([s.balance for s in sums], dec),
            "used": pa.array([f"{s.used_fraction:.1%}" for s in sums], pa.string()),
            "alerts": pa.array([alerts[s.account] for s in sums], pa.string()),
        }
    )
    emit_table(rows, format, empty="no credit recorded")


@accounts_app.command("ledger")
def ledger(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The account.")],
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Only the last N entries.")
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """An account's credits and charges, oldest first, with the balance after each."""
    import pyarrow as pa

    from matrixos.catalog.billing import Billing

    with connect(ctx) as lh:
        lh.catalog.get_account(name)
        entries = Billing(lh.catalog).ledger(name, limit=limit)
    dec = pa.decimal128(38, 9)
    rows = pa.table(
        {
            "id": pa.array([e.id for e in entries], pa.int64()),
            "at": pa.array([e.at for e in entries], pa.timestamp("s", tz="UTC")),
            "kind": pa.array([e.kind for e in entries], pa.string()),
            "degrees": pa.array([e.degrees for e in entries], dec),
            "balance": pa.array([e.balance for e in entries], dec),
            "ref": pa.array([e.ref for e in entries], pa.string()),
            "by": pa.array([e.by for e in entries], pa.string()),
            "note": pa.array([e.note for e in entries], pa.string()),
        }
    )
    emit_table(rows, format, empty=f"no ledger entries for {name}")


def _degrees(value: object) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") if value is not None else "?"
