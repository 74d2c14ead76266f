"""``lh.accounts``: the session's accounts and their prepaid compute credit, as its principal.

A thin view over ``catalog.accounts.Accounts`` (who exists, groups) and
``catalog.billing.Billing`` (credits, ledger, alerts) that passes the session's principal as
``by=``: only an admin creates accounts or credits them; a non-admin reads the credit of the
accounts it is or belongs to.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> lh.accounts.create("team-a", kind="group")
    >>> lh.accounts.credit("team-a", degrees=100)
    Decimal('100.000000000')
    >>> lh.accounts.balance("team-a")
    Decimal('100.000000000')
    >>> [(e.kind, e.degrees) for e in lh.accounts.ledger("team-a")]
    [('credit', Decimal('100.000000000'))]
"""

from __future__ import annotations

import builtins
from decimal import Decimal

from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.base import AccountInfo, Catalog
from matrixos.catalog.billing import Alert, Billing, CreditSummary, LedgerEntry

__all__ = ["SessionAccounts"]


class SessionAccounts:
    """Accounts and credit, acting as ``principal``."""

    def __init__(self, catalog: Catalog, principal: Principal) -> None:
        self._accounts = Accounts(catalog)
        self._catalog = catalog
        self.principal = principal

    @property
    def billing(self) -> Billing:
        """The catalog's credit ledger (``ConfigError`` on an object-store catalog)."""
        return Billing(self._catalog)

    def create(
        self, name: str, kind: str = "user", *, admin: bool = False, password: str | None = None
    ) -> None:
        """Create a user, ``group`` or ``service`` principal (admin-only)."""
        self._accounts.create(name, kind, admin, password, by=self.principal)

    def list(self) -> list[AccountInfo]:
        """Every account, by name."""
        return self._accounts.list()

    def add_member(self, group: str, member: str) -> None:
        """Put ``member`` in ``group`` (admin-only)."""
        self._accounts.add_member(group, member, by=self.principal)

    def credit(
        self, account: str, degrees: Decimal | float | int | str, *, note: str | None = None
    ) -> Decimal:
        """Add a prepaid package of ``degrees`` to ``account`` (admin-only); the balance."""
        return self.billing.credit(account, degrees, by=self.principal, note=note)

    def balance(self, account: str) -> Decimal:
        """``account``'s balance in degrees."""
        return self.billing.balance(account, by=self.principal)

    def summary(self, account: str) -> CreditSummary:
        """``account``'s credited, consumed and balance."""
        return self.billing.summary(account, by=self.principal)

    def ledger(self, account: str, *, limit: int | None = None) -> builtins.list[LedgerEntry]:
        """``account``'s credits and charges, oldest first, each with the balance after it."""
        return self.billing.ledger(account, by=self.principal, limit=limit)

    def alerts(self, account: str) -> builtins.list[Alert]:
        """The 50/75/90 % alerts recorded for ``account``."""
        return self.billing.alerts(account, by=self.principal)
