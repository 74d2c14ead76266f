"""Prepaid credit in the catalog database (SQLite and PostgreSQL): the ledger balances to the
nano-degree under concurrent chargers in several processes, alerts fire once each, and work the
balance cannot pay for is refused with the numbers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest

from matrixos.catalog import open_catalog
from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.billing import Billing
from matrixos.errors import AccessDenied, AccountNotFound, ConfigError, OutOfCredit

ADMIN = Principal("root")  # holds "*"
BOB = Principal("bob", frozenset(), groups=frozenset({"team-a"}))
EVE = Principal("eve", frozenset())


@pytest.fixture
def billing(catalog_url: str) -> Billing:
    catalog = open_catalog(catalog_url)
    accounts = Accounts(catalog)
    accounts.create("team-a", kind="group")
    accounts.create("bob")
    accounts.create("eve")
    accounts.add_member("team-a", "bob")
    return Billing(catalog)


def test_credit_charge_ledger_and_alerts(
    billing: Billing, caplog: pytest.LogCaptureFixture
) -> None:
    assert billing.balance("team-a") == 0
    assert billing.credit("team-a", 100, by=ADMIN, note="package 1") == Decimal(100)
    assert billing.charge("team-a", "49.999999999", ref="job-1") == Decimal("50.000000001")
    assert billing.alerts("team-a") == []  # 49.999999999 % is not 50 %
    with caplog.at_level("WARNING", logger="matrixos.catalog.billing"):
        billing.charge("team-a", "0.000000001", ref="job-1")
    assert [a.threshold for a in billing.alerts("team-a")] == [50]
    assert "team-a has used 50% of the 100.000000000 degrees credited to it" in caplog.text
    billing.charge("team-a", 30, ref="job-2")  # 80 %: 75 fires, 50 does not again
    billing.charge("team-a", 1, ref="job-2")
    assert [a.threshold for a in billing.alerts("team-a")] == [50, 75]
    billing.charge("team-a", 25, ref="job-3")  # past zero: the caller stops the job
    assert billing.balance("team-a") == Decimal(-6)
    alerts = billing.alerts("team-a")
    assert [a.threshold for a in alerts] == [50, 75, 90]
    assert alerts[2].credited == 100 and alerts[2].consumed == 106
    # A top-up arms the alerts again, against the new total.
    billing.credit("team-a", 100, by=ADMIN)
    billing.charge("team-a", "0.5", ref="job-4")
    assert [a.threshold for a in billing.alerts("team-a")] == [50, 75, 90, 50]
    billing.refund("team-a", "0.5", ref="job-4", by=ADMIN, note="failed on our side")

    entries = billing.ledger("team-a")
    assert [e.kind for e in entries] == ["credit"] + ["charge"] * 5 + ["credit", "charge", "refund"]
    assert entries[0].note == "package 1" and entries[0].by == "root"
    assert entries[-1].balance == billing.balance("team-a") == Decimal(94)
    assert sum(e.degrees for e in entries) == billing.balance("team-a")
    s = billing.summary("team-a")
    assert (s.credited, s.consumed, s.balance) == (Decimal(200), Decimal(106), Decimal(94))
    assert [e.ref for e in billing.ledger("team-a", limit=2)] == ["job-4", "job-4"]


def test_out_of_credit_carries_the_numbers(billing: Billing) -> None:
    with pytest.raises(OutOfCredit) as e:  # never credited
        billing.check_affordable("team-a", 1)
    assert (e.value.balance, e.value.asked, e.value.account) == (0, 1, "team-a")
    billing.credit("team-a", 10, by=ADMIN)
    assert billing.check_affordable("team-a", "9.5") == 10
    with pytest.raises(
        OutOfCredit, match=r"team-a has 10\.0+ degrees left; .* asks for 12\.5"
    ) as e:
        billing.check_affordable("team-a", "12.5")
    assert (e.value.balance, e.value.asked) == (Decimal(10), Decimal("12.5"))
    assert "matrixos accounts credit team-a" in str(e.value)
    billing.charge("team-a", 10, ref="job-1")
    with pytest.raises(OutOfCredit):  # zero left: even work of unknown cost is refused
        billing.check_affordable("team-a")


def test_only_admins_credit_and_members_read(billing: Billing) -> None:
    with pytest.raises(AccessDenied, match="bob may not credit team-a"):
        billing.credit("team-a", 100, by=BOB)
    with pytest.raises(AccessDenied):
        billing.refund("team-a", 1, by=BOB)
    billing.credit("team-a", 5, by=ADMIN)
    assert billing.balance("team-a", by=BOB) == 5  # a member reads its group's credit
    with pytest.raises(AccessDenied, match="eve may not read the credit of team-a"):
        billing.balance("team-a", by=EVE)
    with pytest.raises(AccessDenied):
        billing.ledger("team-a", by=EVE)
    assert [s.account for s in billing.summaries(by=EVE)] == []
    assert [s.account for s in billing.summaries(by=BOB)] == ["team-a"]
    with pytest.raises(AccountNotFound):
        billing.credit("nobody", 1, by=ADMIN)
    with pytest.raises(ConfigError, match="must be positive"):
        billing.credit("team-a", -1, by=ADMIN)
    with pytest.raises(ConfigError, match="not a number"):
        billing.credit("team-a", "lots", by=ADMIN)
    with pytest.raises(ConfigError, match="cannot be negative"):
        billing.charge("team-a", -1)


CHARGER = textwrap.dedent(
    """
    import sys
    from matrixos.catalog import open_catalog
    from matrixos.catalog.billing import Billing
    url, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    billing = Billing(open_catalog(url))
    for i in range(n):
        # amounts with all nine decimals, different per worker and charge
        billing.charge("team-a", f"0.{worker}{i:03d}12345", ref=f"w{worker}-{i}")
        if i % 10 == 0:
            billing.charge_many([("bob", "0.000000007", f"w{worker}-{i}"),
                                 ("team-a", "0.000000003", f"w{worker}-{i}")])
    """
)


def test_concurrent_chargers_in_several_processes_balance_exactly(
    billing: Billing, catalog_url: str
) -> None:
    billing.credit("team-a", 42, by=ADMIN)
    workers, n = 4, 40
    procs = [
        subprocess.Popen([sys.executable, "-c", CHARGER, catalog_url, str(w), str(n)])
        for w in range(1, workers + 1)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0] * workers
    expected = Decimal(0)
    for w in range(1, workers + 1):
        for i in range(n):
            expected += Decimal(f"0.{w}{i:03d}12345")
            if i % 10 == 0:
                expected += Decimal("0.000000003")
    entries = billing.ledger("team-a")
    charges = [e for e in entries if e.kind == "charge"]
    assert len(charges) == workers * (n + n // 10)
    assert len({(e.ref, e.degrees) for e in charges}) == len(charges)  # none lost or doubled
    assert -sum(e.degrees for e in charges) == expected
    assert billing.balance("team-a") == Decimal(42) - expected
    assert sum(e.degrees for e in entries) == billing.balance("team-a")
    assert billing.balance("bob") == Decimal("-0.000000007") * workers * (n // 10)
    # 4 x 40 charges of 0.1-0.4 degrees consume ~40 of 42: each threshold fired exactly once.
    assert expected > Decimal("0.9") * 42
    assert [a.threshold for a in billing.alerts("team-a")] == [50, 75, 90]
