"""A token records when and from which client address it was last used, in every catalog
backend; a catalog database made before that column existed gets it when opened."""

from __future__ import annotations

import sqlalchemy as sa

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.store import SQLCatalog


def test_a_token_records_where_it_was_last_used(tmp_path, catalog_url: str) -> None:
    with mx.connect(str(tmp_path / "wh"), catalog_url=catalog_url) as lh:
        accounts = Accounts(lh.catalog)
        accounts.create("bob")
        token = accounts.create_token("bob")
        assert accounts.authenticate_token(token, client="10.0.0.7").name == "bob"
        (info,) = accounts.tokens("bob")
        assert info.last_used_from == "10.0.0.7" and info.last_used_at is not None
        # a use from another address is recorded at once (not only once a minute)
        accounts.authenticate_token(token, client="10.0.0.8")
    with mx.connect(str(tmp_path / "wh"), catalog_url=catalog_url) as again:
        (info,) = Accounts(again.catalog).tokens("bob")
        assert info.last_used_from == "10.0.0.8"


def test_an_older_catalog_database_gets_the_new_column(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    SQLCatalog(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as a catalog made before tokens recorded an address
        conn.execute(sa.text("ALTER TABLE mx_tokens DROP COLUMN last_used_from"))
    engine.dispose()
    catalog = SQLCatalog(url)
    accounts = Accounts(catalog)
    accounts.create("bob")
    accounts.authenticate_token(accounts.create_token("bob"), client="10.0.0.9")
    assert [t.last_used_from for t in accounts.tokens("bob")] == ["10.0.0.9"]
    catalog.close()
