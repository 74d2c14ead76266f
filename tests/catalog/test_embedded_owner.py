"""Who owns what an embedded ``mx.connect()`` creates: ``embedded:<OS user>``, a name no server
account can take — an account named like the OS user gains nothing — unless the session names
its owner (``user=``), which is then that account's by design."""

from __future__ import annotations

import getpass

import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.errors import AccessDenied, ConfigError


def test_an_account_named_like_the_os_user_does_not_own_embedded_tables(tmp_path) -> None:
    os_user = getpass.getuser()
    with mx.connect(str(tmp_path / "wh")) as lh:
        lh.create_table("notes.mine", [{"id": 1}])
        assert lh.table("notes.mine").info.owner == f"embedded:{os_user}"
        accounts = Accounts(lh.catalog)
        accounts.create(os_user)
        namesake = lh.with_principal(accounts.principal(os_user))
        for sql in (
            "SELECT * FROM notes.mine",
            "INSERT INTO notes.mine VALUES (2)",
            "DROP TABLE notes.mine",
            f"GRANT SELECT ON TABLE notes.mine TO {os_user}",
        ):
            with pytest.raises(AccessDenied):
                namesake.sql(sql)
        assert namesake.tables() == []
        # the embedded session itself still does anything
        assert lh.sql("SELECT count(*) FROM notes.mine").fetchall() == [(1,)]
        # no account can take the embedded session's names
        for name in (f"embedded:{os_user}", "embedded", "system"):
            with pytest.raises(ConfigError):
                accounts.create(name)


def test_a_configured_user_names_the_owning_account(tmp_path) -> None:
    with mx.connect(str(tmp_path / "wh"), user="alice") as lh:
        lh.create_table("notes.alices", [{"id": 1}])
        assert lh.table("notes.alices").info.owner == "alice"
        accounts = Accounts(lh.catalog)
        accounts.create("alice")
        alice = lh.with_principal(accounts.principal("alice"))
        assert alice.sql("SELECT count(*) FROM notes.alices").fetchall() == [(1,)]
