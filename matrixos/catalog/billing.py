"""Prepaid compute credits: each account's ledger and balance in degrees, kept in the catalog DB.

1 degree = 312 TFLOPS x 1 hour (see ``matrixos.metering``). An admin credits an account with a
package of degrees; metered use is charged against it; the balance is what is left. Amounts are
``Decimal`` degrees quantized to 1e-9 and stored as integer nano-degrees, so the ledger adds up
exactly: credits + refunds - charges = balance, to the nano-degree. (Nano, not micro: a CPU
core-second is 89 nano-degrees, so a short SQL statement would round to nothing in micro.)

Tables (on ``store.METADATA``, made when ``Billing`` first opens a catalog):

- ``mx_credits_ledger``: one row per movement (``credit``, ``charge``, ``refund``), a signed
  ``nano`` amount (charges negative), the ``ref`` it pays for (a job or statement id), ``by``,
  ``at`` and a ``note``.
- ``mx_credit_balances``: per account the running totals (``credited``, ``consumed``,
  ``balance``), updated in the same transaction as the ledger row. The update is one
  ``UPDATE … SET balance = balance - :x`` (a row lock on PostgreSQL, the write lock on SQLite),
  so chargers in many processes at once never lose an update.
- ``mx_billing_alerts``: when the consumed share of what was credited first reaches 50, 75 and
  90 %, once each per credited total (a top-up arms them again).

Hard stop: ``charge`` always books the whole amount, which may take a balance below zero by at
most what one metering interval used; the caller (the job runtime) stops the job when the
balance it gets back is <= 0. ``check_affordable`` refuses work the balance cannot pay for with
``OutOfCredit`` carrying the numbers.

Example:
    >>> from matrixos.catalog import open_catalog
    >>> from matrixos.catalog.accounts import Accounts
    >>> catalog = open_catalog("sqlite://")
    >>> Accounts(catalog).create("team-a", kind="group")
    >>> billing = Billing(catalog)
    >>> billing.credit("team-a", 100, note="first package")
    Decimal('100.000000000')
    >>> billing.charge("team-a", "60.5", ref="job-1")
    Decimal('39.500000000')
    >>> [a.threshold for a in billing.alerts("team-a")]
    [50]
    >>> billing.check_affordable("team-a", 50)
    Traceback (most recent call last):
    matrixos.errors.OutOfCredit: team-a has 39.500000000 degrees left; the work asks for 50.0...
    Hint: ask an admin for credit: matrixos accounts credit team-a --degrees N
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from matrixos.catalog.access import Principal
from matrixos.catalog.base import Catalog, now
from matrixos.catalog.store import METADATA
from matrixos.errors import AccessDenied, ConfigError, OutOfCredit, StorageError

__all__ = [
    "ALERT_THRESHOLDS",
    "Alert",
    "Billing",
    "CreditSummary",
    "LedgerEntry",
    "from_nano",
    "may_see",
    "to_nano",
]

log = logging.getLogger(__name__)

NANO = 1_000_000_000
_QUANTUM = Decimal("0.000000001")
#: Percentages of the credited total whose consumption is recorded as an alert, once each.
ALERT_THRESHOLDS = (50, 75, 90)
KINDS = ("credit", "charge", "refund")

_ledger = sa.Table(
    "mx_credits_ledger",
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("account", sa.String(256), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("nano", sa.BigInteger, nullable=False),  # signed: charges are negative
    sa.Column("ref", sa.String(256)),
    sa.Column("by", sa.String(256)),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("note", sa.Text),
)
_balances = sa.Table(
    "mx_credit_balances",
    METADATA,
    sa.Column("account", sa.String(256), primary_key=True),
    sa.Column("credited", sa.BigInteger, nullable=False),  # Σ credits
    sa.Column("consumed", sa.BigInteger, nullable=False),  # Σ charges - Σ refunds
    sa.Column("balance", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
_alerts = sa.Table(
    "mx_billing_alerts",
    METADATA,
    sa.Column("account", sa.String(256), primary_key=True),
    sa.Column("threshold", sa.Integer, primary_key=True),
    sa.Column("credited", sa.BigInteger, primary_key=True),  # the total it fired against
    sa.Column("consumed", sa.BigInteger, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)
_TABLES = (_ledger, _balances, _alerts)


def to_nano(degrees: Decimal | float | int | str) -> int:
    """``degrees`` as integer nano-degrees (rounded half to even at 1e-9).

    Example:
        >>> to_nano("1.5"), to_nano(0.1), to_nano(Decimal("0.0000000005"))
        (1500000000, 100000000, 0)
    """
    try:
        value = degrees if isinstance(degrees, Decimal) else Decimal(str(degrees))
        return int(value.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN) * NANO)
    except (InvalidOperation, ValueError):
        raise ConfigError(f"{degrees!r} is not a number of degrees") from None


def from_nano(nano: int) -> Decimal:
    """Integer nano-degrees as ``Decimal`` degrees with six places.

    Example:
        >>> from_nano(1500000000)
        Decimal('1.500000000')
    """
    return (Decimal(nano) / NANO).quantize(_QUANTUM)


def may_see(by: Principal | None, account: str) -> bool:
    """Whether ``by`` may read ``account``'s credit and usage: an admin, the account itself,
    or a member of it (a group); ``None`` is a trusted caller (the catalog's own credentials)."""
    return by is None or by.is_admin or by.name == account or account in by.groups


@dataclass(frozen=True)
class LedgerEntry:
    """One movement of an account's credit; ``degrees`` is signed (a charge is negative) and
    ``balance`` is the account's balance after it."""

    id: int
    account: str
    kind: str
    degrees: Decimal
    balance: Decimal
    ref: str | None
    by: str | None
    at: datetime
    note: str | None


@dataclass(frozen=True)
class CreditSummary:
    """An account's totals, in degrees: ``balance = credited - consumed``."""

    account: str
    credited: Decimal
    consumed: Decimal
    balance: Decimal

    @property
    def used_fraction(self) -> float:
        """The share of what was credited that is consumed (0 when nothing was credited)."""
        return float(self.consumed / self.credited) if self.credited > 0 else 0.0


@dataclass(frozen=True)
class Alert:
    """``threshold`` % of ``credited`` degrees were consumed (``consumed`` at that moment)."""

    account: str
    threshold: int
    credited: Decimal
    consumed: Decimal
    at: datetime


# Engines whose tables are made (checked once per engine, not per Billing).
_made: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_made_lock = threading.Lock()


class Billing:
    """Credits, charges and balances of a catalog's accounts. Thread- and process-safe.

    Changes take ``by=``: an admin credits and refunds; anyone metering work may ``charge``
    (the job runtime and the SQL meter do). Reads take ``by=`` too: a non-admin sees only
    accounts it is or belongs to. ``by=None`` is a trusted caller (the CLI, with the catalog's
    own credentials).
    """

    def __init__(self, catalog: Catalog) -> None:
        engine = getattr(catalog, "engine", None)
        if not isinstance(engine, sa.Engine):
            raise ConfigError(
                f"prepaid credits need a database catalog, not {catalog!r}",
                hint="use the default SQLite catalog or catalog_url='postgresql://…'",
            )
        self.catalog = catalog
        self.engine = engine
        self._known: set[str] = set()  # accounts whose balance row exists
        _make_tables(engine)

    # -- movements --------------------------------------------------------------------------
    def credit(
        self,
        account: str,
        degrees: Decimal | float | int | str,
        *,
        by: Principal | None = None,
        note: str | None = None,
    ) -> Decimal:
        """Add a prepaid package of ``degrees`` to ``account``; the balance after.

        Raises:
            AccessDenied: ``by`` is not an admin.
            AccountNotFound: no such account.
            ConfigError: ``degrees`` is not a positive number.
        """
        return self._grant("credit", account, degrees, by=by, note=note, ref=None)

    def refund(
        self,
        account: str,
        degrees: Decimal | float | int | str,
        *,
        ref: str | None = None,
        by: Principal | None = None,
        note: str | None = None,
    ) -> Decimal:
        """Give back ``degrees`` charged for ``ref`` (a failed job…); the balance after.
        Admin-only, like ``credit``."""
        return self._grant("refund", account, degrees, by=by, note=note, ref=ref)

    def _grant(
        self,
        kind: str,
        account: str,
        degrees: Decimal | float | int | str,
        *,
        by: Principal | None,
        note: str | None,
        ref: str | None,
    ) -> Decimal:
        if by is not None and not by.is_admin:
            raise AccessDenied(
                f"{by.name} may not {kind} {account}",
                hint="only an admin may credit accounts",
            )
        nano = to_nano(degrees)
        if nano <= 0:
            raise ConfigError(f"{kind} degrees must be positive, not {degrees!r}")
        self.catalog.get_account(account)  # AccountNotFound
        who = None if by is None else by.name
        (balance,) = self._book([(account, kind, nano, ref, note)], who).values()
        return balance

    def charge(
        self,
        account: str,
        degrees: Decimal | float | int | str,
        ref: str | None = None,
        *,
        by: Principal | None = None,
        note: str | None = None,
    ) -> Decimal:
        """Charge ``degrees`` of metered use to ``account`` for ``ref``; the balance after,
        which may be below zero (the caller stops the work then).

        Raises:
            ConfigError: ``degrees`` is negative.
        """
        return self.charge_many([(account, degrees, ref)], by=by, note=note)[account]

    def charge_many(
        self,
        charges: list[tuple[str, Decimal | float | int | str, str | None]],
        *,
        by: Principal | None = None,
        note: str | None = None,
        also: Callable[[sa.Connection], None] | None = None,
    ) -> dict[str, Decimal]:
        """Charge each ``(account, degrees, ref)`` in one transaction; each account's
        balance after. ``also(conn)`` writes more in that transaction (the usage rows' outbox,
        ``catalog/outbox.py``): all of it commits, or none."""
        rows = []
        for account, degrees, ref in charges:
            nano = to_nano(degrees)
            if nano < 0:
                raise ConfigError(f"a charge cannot be negative ({degrees!r} degrees)")
            rows.append((account, "charge", nano, ref, note))
        return self._book(rows, None if by is None else by.name, also)

    def _book(
        self,
        rows: list[tuple[str, str, int, str | None, str | None]],
        by: str | None,
        also: Callable[[sa.Connection], None] | None = None,
    ) -> dict[str, Decimal]:
        """Write ledger rows and move the balances, all in one transaction."""
        at = now()
        for account in sorted({r[0] for r in rows}):
            self._ensure_balance(account, at)
        totals: dict[str, list[int]] = {}  # account -> [credited, consumed] deltas
        for account, kind, nano, _, _ in rows:
            delta = totals.setdefault(account, [0, 0])
            delta[0 if kind == "credit" else 1] += nano if kind != "refund" else -nano
        out: dict[str, Decimal] = {}
        fired: list[tuple[str, int, int]] = []  # (account, threshold, credited)
        try:
            with self.engine.begin() as conn:
                # Accounts in name order: two transactions never wait on each other's rows.
                for account in sorted(totals):
                    credited, consumed = totals[account]
                    b = _balances.c
                    row = conn.execute(
                        _balances.update()
                        .where(b.account == account)
                        .values(
                            credited=b.credited + credited,
                            consumed=b.consumed + consumed,
                            balance=b.balance + credited - consumed,
                            updated_at=at,
                        )
                        .returning(b.credited, b.consumed, b.balance)
                    ).one()
                    out[account] = from_nano(row.balance)
                    if consumed > 0:
                        # Stamped now, holding the balance row: ``at`` was taken before the
                        # lock, so a later crossing by another process could sort first.
                        for t in _alert(conn, account, row.credited, row.consumed, now()):
                            fired.append((account, t, row.credited))
                entries = [
                    {
                        "account": account,
                        "kind": kind,
                        "nano": -nano if kind == "charge" else nano,
                        "ref": ref,
                        "by": by,
                        "at": at,
                        "note": note,
                    }
                    for account, kind, nano, ref, note in rows
                ]
                if entries:
                    conn.execute(_ledger.insert(), entries)
                if also is not None:
                    also(conn)
        except OperationalError as e:
            raise StorageError(f"the credit ledger could not be written: {e.orig}") from e
        for account, threshold, credited in fired:
            log.warning(
                "%s has used %d%% of the %s degrees credited to it (balance %s)",
                account,
                threshold,
                from_nano(credited),
                out[account],
            )
        return out

    def _ensure_balance(self, account: str, at: datetime) -> None:
        if account in self._known:
            return  # balance rows are never deleted
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(_balances.c.account).where(_balances.c.account == account)
            ).first()
        if found is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(
                        _balances.insert().values(
                            account=account, credited=0, consumed=0, balance=0, updated_at=at
                        )
                    )
            except IntegrityError:
                pass  # another process made it first
        self._known.add(account)

    # -- reads ------------------------------------------------------------------------------
    def summary(self, account: str, *, by: Principal | None = None) -> CreditSummary:
        """``account``'s credited, consumed and balance (zeros when never credited)."""
        _check_may_see(by, account)
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_balances).where(_balances.c.account == account)).first()
        if row is None:
            zero = from_nano(0)
            return CreditSummary(account, zero, zero, zero)
        return _summary(row)

    def summaries(self, *, by: Principal | None = None) -> list[CreditSummary]:
        """Every account with credit or charges that ``by`` may see, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_balances).order_by(_balances.c.account)).all()
        return [_summary(r) for r in rows if may_see(by, r.account)]

    def balance(self, account: str, *, by: Principal | None = None) -> Decimal:
        """``account``'s balance in degrees (0 when never credited)."""
        return self.summary(account, by=by).balance

    def ledger(
        self, account: str, *, by: Principal | None = None, limit: int | None = None
    ) -> list[LedgerEntry]:
        """``account``'s movements, oldest first (the last ``limit`` when given), each with
        the balance after it."""
        _check_may_see(by, account)
        c = _ledger.c
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_ledger).where(c.account == account).order_by(c.id)).all()
        out, running = [], 0
        for r in rows:
            running += r.nano
            out.append(
                LedgerEntry(
                    id=r.id,
                    account=r.account,
                    kind=r.kind,
                    degrees=from_nano(r.nano),
                    balance=from_nano(running),
                    ref=r.ref,
                    by=r.by,
                    at=_aware(r.at),
                    note=r.note,
                )
            )
        return out[-limit:] if limit else out

    def alerts(self, account: str, *, by: Principal | None = None) -> list[Alert]:
        """The alerts recorded for ``account``, oldest first."""
        _check_may_see(by, account)
        c = _alerts.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(_alerts).where(c.account == account).order_by(c.at, c.threshold)
            ).all()
        return [
            Alert(
                r.account, r.threshold, from_nano(r.credited), from_nano(r.consumed), _aware(r.at)
            )
            for r in rows
        ]

    def check_affordable(self, account: str, degrees: Decimal | float | int | str = 0) -> Decimal:
        """The balance, when it covers ``degrees`` (and is above zero).

        Raises:
            OutOfCredit: the balance is <= 0 or below ``degrees``; it carries both.
        """
        asked = from_nano(to_nano(degrees))
        balance = self.balance(account)
        if balance <= 0 or asked > balance:
            raise OutOfCredit(
                f"{account} has {balance:f} degrees left; the work asks for {asked:f}",
                account=account,
                balance=balance,
                asked=asked,
                hint=f"ask an admin for credit: matrixos accounts credit {account} --degrees N",
            )
        return balance


def _alert(
    conn: sa.Connection, account: str, credited: int, consumed: int, at: datetime
) -> list[int]:
    """Record each threshold ``consumed`` has reached and that is not recorded yet for this
    credited total (the caller holds the account's balance row, so this cannot race); the
    thresholds recorded now."""
    if credited <= 0:
        return []
    reached = [t for t in ALERT_THRESHOLDS if consumed * 100 >= credited * t]
    if not reached:
        return []
    c = _alerts.c
    have = set(
        conn.execute(
            sa.select(c.threshold).where(c.account == account, c.credited == credited)
        ).scalars()
    )
    new = [t for t in reached if t not in have]
    if new:
        conn.execute(
            _alerts.insert(),
            [
                {
                    "account": account,
                    "threshold": t,
                    "credited": credited,
                    "consumed": consumed,
                    "at": at,
                }
                for t in new
            ],
        )
    return new


def _summary(row: Any) -> CreditSummary:
    return CreditSummary(
        row.account, from_nano(row.credited), from_nano(row.consumed), from_nano(row.balance)
    )


def _check_may_see(by: Principal | None, account: str) -> None:
    if not may_see(by, account):
        raise AccessDenied(
            f"{by.name if by else '?'} may not read the credit of {account}",
            hint="an account's credit is visible to its members and to admins",
        )


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _make_tables(engine: sa.Engine) -> None:
    if engine in _made:
        return
    with _made_lock:
        for table in _TABLES:
            # Another process may make it between the check and the create; anything else
            # shows at the first real statement.
            with contextlib.suppress(IntegrityError, OperationalError, sa.exc.ProgrammingError):
                table.create(engine, checkfirst=True)
        _made.add(engine)
