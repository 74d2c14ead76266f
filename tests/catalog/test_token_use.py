"""A token records when and from which client address it was last used, in every catalog
backend (an older catalog database gets the column by migration: tests/catalog/test_migrations)."""

from __future__ import annotations

import matrixos as mx
from matrixos.catalog.accounts import Accounts


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
