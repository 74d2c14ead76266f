"""Accounts, tokens and passwords in every catalog backend (SQLite, PostgreSQL, the commit log):
secrets shown once and kept only as hashes, expiry, revocation, SCRAM verifiers."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

import matrixos as mx
from matrixos.catalog import open_catalog
from matrixos.catalog.accounts import Accounts, ScramVerifier, parse_duration
from matrixos.catalog.base import now
from matrixos.catalog.objectstore import CHECKPOINT_EVERY
from matrixos.catalog.throttle import LoginThrottle
from matrixos.errors import AccessDenied, AccountExists, AccountNotFound, ConfigError

try:
    from tests._servers import PostgresServer
except ModuleNotFoundError:
    from _servers import PostgresServer  # type: ignore[no-redef]


@pytest.fixture
def accounts(catalog_url: str):
    cat = open_catalog(catalog_url)
    yield Accounts(cat)
    cat.close()


def _at_rest(catalog_url: str, tmp_path: Path) -> bytes:
    """Every byte the catalog keeps on disk (SQLite file and WAL, or the log's objects)."""
    if catalog_url.startswith("file://"):
        root = Path(catalog_url[len("file://") :])
    elif catalog_url.startswith("sqlite:///"):
        root = tmp_path
    else:
        return b""
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_accounts_groups_and_drop(accounts: Accounts) -> None:
    accounts.create("alice", admin=True)
    accounts.create("bob")
    accounts.create("analysts", kind="group")
    accounts.create("etl", kind="service")
    with pytest.raises(AccountExists, match="'bob' already exists"):
        accounts.create("bob")
    for bad in ("", "bob smith", "-x", "a;drop"):
        with pytest.raises(ConfigError, match="not a valid account name"):
            accounts.create(bad)
    with pytest.raises(ConfigError, match="unknown account kind"):
        accounts.create("x", kind="robot")
    assert [(a.name, a.kind, a.admin) for a in accounts.list()] == [
        ("alice", "user", True),
        ("analysts", "group", False),
        ("bob", "user", False),
        ("etl", "service", False),
    ]
    accounts.add_member("analysts", "bob")
    accounts.add_member("analysts", "bob")  # twice is once
    assert accounts.members("analysts") == ["bob"]
    with pytest.raises(ConfigError, match="is not a group"):
        accounts.add_member("bob", "etl")
    with pytest.raises(AccountNotFound, match="'nobody' does not exist"):
        accounts.add_member("analysts", "nobody")
    accounts.create("all", kind="group")
    accounts.add_member("all", "analysts")
    with pytest.raises(ConfigError, match="contain itself"):
        accounts.add_member("analysts", "all")
    assert accounts.principal("bob").groups == {"analysts", "all"}

    accounts.grant("USE CATALOG", "main", "bob")
    accounts.create_token("bob")
    accounts.set_password("bob", "pw")
    accounts.drop("bob")
    assert "bob" not in [a.name for a in accounts.list()]
    assert accounts.members("analysts") == []
    assert accounts.grants("bob") == [] and accounts.tokens("bob") == []
    assert accounts.scram_verifier("bob") is None
    with pytest.raises(AccountNotFound):
        accounts.principal("bob")
    # a new bob inherits nothing of the old one
    accounts.create("bob")
    assert accounts.principal("bob").grants == frozenset()


def test_only_admins_manage_accounts(accounts: Accounts) -> None:
    accounts.create("root", admin=True)
    accounts.create("bob")
    root, bob = accounts.principal("root"), accounts.principal("bob")
    assert root.is_admin and not bob.is_admin
    accounts.create("carol", by=root)
    for change in (
        lambda: accounts.create("mallory", admin=True, by=bob),
        lambda: accounts.drop("carol", by=bob),
        lambda: accounts.set_admin("bob", True, by=bob),
        lambda: accounts.create_token("carol", by=bob),
        lambda: accounts.set_password("carol", "x", by=bob),
    ):
        with pytest.raises(AccessDenied):
            change()
    assert not accounts.get("bob").admin and accounts.tokens("carol") == []
    accounts.create_token("bob", by=bob)  # one's own token, one's own password
    accounts.set_password("bob", "mine", by=bob)
    # an admin group makes its members admins
    accounts.create("admins", kind="group", admin=True)
    accounts.add_member("admins", "bob")
    assert accounts.principal("bob").is_admin


def test_tokens_shown_once_hashed_at_rest(
    accounts: Accounts, catalog_url: str, tmp_path: Path
) -> None:
    accounts.create("bob")
    token = accounts.create_token("bob", expires_in="30d")
    assert token.startswith("mxt_")
    (info,) = accounts.tokens("bob")
    assert info.expires_at is not None
    assert timedelta(days=29) < info.expires_at - info.created_at <= timedelta(days=30)
    secret = token.split("_", 2)[2]
    assert info.id in token and secret not in info.hash and "scrypt$" in info.hash
    assert secret not in repr(info)
    if catalog_url.startswith(("sqlite", "file")):
        kept = _at_rest(catalog_url, tmp_path)
        assert info.id.encode() in kept  # the grep looks where the token's record is…
        assert secret.encode() not in kept and token.encode() not in kept  # …and finds no secret

    assert info.last_used_at is None
    assert accounts.authenticate_token(token).name == "bob"
    assert accounts.authenticate_token(f" {token}\n").name == "bob"
    (used,) = accounts.tokens("bob")
    assert used.last_used_at is not None

    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for bad in (wrong, "mxt_nope_nope", "mxt_", "", "Bearer " + token, f"mxt_{info.id}_"):
        with pytest.raises(AccessDenied, match="token authentication failed") as e:
            accounts.authenticate_token(bad)
        assert secret not in str(e.value)


def test_expired_and_revoked_tokens_are_refused(accounts: Accounts) -> None:
    accounts.create("bob")
    first, second = accounts.create_token("bob"), accounts.create_token("bob", expires_in=3600)
    assert accounts.authenticate_token(first).name == accounts.authenticate_token(second).name
    one, two = accounts.tokens("bob")
    assert one.expires_at is None and two.expires_at is not None
    # expiry: the record says it has passed (no sleeping); a checked token is checked again
    accounts.catalog.update_token(replace(two, expires_at=now() - timedelta(seconds=1)))
    with pytest.raises(AccessDenied):
        accounts.authenticate_token(second)
    # revocation takes effect at once, even for a token this process checked before
    accounts.revoke_token(one.id)
    with pytest.raises(AccessDenied):
        accounts.authenticate_token(first)
    # and in another process's Accounts on the same catalog
    with pytest.raises(AccessDenied):
        Accounts(accounts.catalog).authenticate_token(first)
    assert accounts.tokens("bob")[0].revoked_at is not None
    with pytest.raises(AccountNotFound):
        accounts.revoke_token("nope")
    # a token of a dropped account is dead
    accounts.create("carol")
    third = accounts.create_token("carol")
    accounts.drop("carol")
    with pytest.raises(AccessDenied):
        accounts.authenticate_token(third)
    accounts.create("team", kind="group")
    with pytest.raises(ConfigError, match="is a group"):
        accounts.create_token("team")


def test_durations() -> None:
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("2w") == timedelta(days=14)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    for bad in ("30", "soon", "-1d", "0s"):
        with pytest.raises(ConfigError):
            parse_duration(bad)


def _client_proof(password: str, salt: bytes, iterations: int, auth: bytes) -> tuple[bytes, bytes]:
    """A SCRAM-SHA-256 client's proof and expected server signature, computed here by
    RFC 5802's formulas without the code under test."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    signature = hmac.new(stored_key, auth, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    return proof, hmac.new(server_key, auth, "sha256").digest()


def test_scram_matches_rfc7677s_example() -> None:
    # RFC 7677 §3: user "user", password "pencil".
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = (
        f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        f"c=biws,r={nonce}"
    ).encode()
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    verifier = ScramVerifier.make("pencil", salt=salt, iterations=4096)
    assert verifier.verify_proof(auth, proof) == base64.b64decode(
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    )
    assert verifier.verify_proof(auth, bytes(32)) is None
    assert ScramVerifier.parse(str(verifier)) == verifier


def test_passwords_keep_only_a_scram_verifier(
    accounts: Accounts, catalog_url: str, tmp_path: Path
) -> None:
    password = "correct horse battery staple ✓"
    accounts.create("bob", password=password)
    v = accounts.scram_verifier("bob")
    assert v is not None and v.iterations == 4096 and len(v.salt) == 16
    auth = b"n=bob,r=abc,r=abcdef,s=" + base64.b64encode(v.salt) + b",i=4096,c=biws,r=abcdef"
    proof, server_signature = _client_proof(password, v.salt, v.iterations, auth)
    assert v.verify_proof(auth, proof) == server_signature
    wrong_proof, _ = _client_proof("correct horse", v.salt, v.iterations, auth)
    assert v.verify_proof(auth, wrong_proof) is None

    assert accounts.authenticate_password("bob", password).name == "bob"
    for name, pw in (("bob", "Correct horse battery staple ✓"), ("nobody", password)):
        with pytest.raises(AccessDenied, match="password authentication failed") as e:
            accounts.authenticate_password(name, pw)
        assert "horse" not in str(e.value)
    if catalog_url.startswith(("sqlite", "file")):
        assert password.encode() not in _at_rest(catalog_url, tmp_path)
    accounts.set_password("bob", None)
    with pytest.raises(AccessDenied):
        accounts.authenticate_password("bob", password)
    accounts.create("team", kind="group")
    with pytest.raises(ConfigError, match="cannot have a password"):
        accounts.set_password("team", "x")


def test_a_verifier_postgres_made_checks_here(postgres_server: PostgresServer) -> None:
    # PostgreSQL's own SCRAM-SHA-256 verifier (pg_authid.rolpassword) is the format we keep.
    with psycopg.connect(postgres_server.dsn(), autocommit=True) as conn:
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute("DROP ROLE IF EXISTS mx_scram_check")
        conn.execute("CREATE ROLE mx_scram_check LOGIN PASSWORD 'pencil ✓'")
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'mx_scram_check'"
        ).fetchone()
        conn.execute("DROP ROLE mx_scram_check")
    assert row is not None
    theirs = ScramVerifier.parse(row[0])
    assert theirs.verify_password("pencil ✓") and not theirs.verify_password("pencil")
    assert str(theirs) == row[0]
    ours = ScramVerifier.make("pencil ✓", salt=theirs.salt, iterations=theirs.iterations)
    assert ours == theirs


def test_grants_are_recorded_and_checked(accounts: Accounts) -> None:
    cat = accounts.catalog
    cat.create_schema("main", "sales")
    accounts.create("bob")
    assert accounts.grant("SELECT", "main.sales", "bob")
    assert not accounts.grant("select", "main.sales.*", "bob")  # the same grant
    with pytest.raises(ConfigError, match="unknown privilege"):
        accounts.grant("READ", "main.sales", "bob")
    with pytest.raises(ConfigError, match="USE CATALOG cannot be granted on a schema"):
        accounts.grant("USE CATALOG", "main.sales", "bob")
    with pytest.raises(AccountNotFound):
        accounts.grant("SELECT", "main.sales", "nobody")
    with pytest.raises(LookupError, match="does not exist"):
        accounts.grant("SELECT", "main.nope", "bob")
    with pytest.raises(LookupError, match="does not exist"):
        accounts.grant("SELECT", "main.sales.nope", "bob")
    (g,) = accounts.grants("bob")
    assert (g.privilege, g.kind, g.securable, g.grantee) == (
        "SELECT",
        "schema",
        "main.sales",
        "bob",
    )
    assert accounts.grants(securable="main.sales") == [g]
    bob = accounts.principal("bob")
    assert bob.grants == {"SELECT ON SCHEMA main.sales"}
    assert not bob.may("SELECT", "main.sales.orders")  # no USE CATALOG / USE SCHEMA yet
    accounts.grant("USE CATALOG", "main", "bob")
    accounts.grant("USE SCHEMA", "main.sales", "bob")
    assert accounts.principal("bob").may("SELECT", "main.sales.orders")
    assert accounts.revoke("SELECT", "main.sales", "bob")
    assert not accounts.revoke("SELECT", "main.sales", "bob")
    assert not accounts.principal("bob").may("SELECT", "main.sales.orders")


def test_accounts_survive_a_log_checkpoint(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'log'}"
    writer = Accounts(open_catalog(url))
    reader = Accounts(open_catalog(url))  # opened before: catches up commit by commit
    writer.create("team", kind="group")
    for i in range(CHECKPOINT_EVERY):
        writer.create(f"u{i}", password=f"pw{i}")
        writer.add_member("team", f"u{i}")
    writer.grant("USE CATALOG", "main", "team")
    token = writer.create_token("u3", "1d")
    writer.drop("u5")
    assert sorted((tmp_path / "log" / "checkpoints").iterdir())  # a checkpoint was written
    fresh = Accounts(open_catalog(url))  # starts from the newest checkpoint
    for accounts in (writer, reader, fresh):
        assert len(accounts.list()) == CHECKPOINT_EVERY  # the team, and every user but u5
        assert accounts.members("team") == sorted(
            f"u{i}" for i in range(CHECKPOINT_EVERY) if i != 5
        )
        assert accounts.principal("u3").grants == {"USE CATALOG ON CATALOG main"}
        assert accounts.authenticate_password("u7", "pw7").name == "u7"
    assert fresh.authenticate_token(token).name == "u3"


def test_a_catalog_made_before_accounts_opens_and_gets_them(tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cat = open_catalog(url)
    cat.create_schema("main", "sales")
    cat.close()
    engine = sa.create_engine(url)
    # As a catalog of the release before accounts left it: no account tables, and no alembic
    # version either (that release predates migrations; a database stamped with a revision has
    # that revision's tables, so the stamp goes too).
    with engine.begin() as conn:
        for table in ("mx_accounts", "mx_members", "mx_grants", "mx_tokens", "mx_passwords"):
            conn.execute(sa.text(f"DROP TABLE {table}"))
        conn.execute(sa.text("DROP TABLE alembic_version"))
    engine.dispose()
    cat = open_catalog(url)
    try:
        assert ("main", "sales") in cat.list_schemas()
        accounts = Accounts(cat)
        assert accounts.list() == []
        accounts.create("bob")
        assert accounts.grant("USE SCHEMA", "main.sales", "bob")
    finally:
        cat.close()


def test_sql_grants_hold_on_every_backend(tmp_path: Path, catalog_url: str) -> None:
    with mx.connect(str(tmp_path / "wh"), catalog_url=catalog_url) as lh:
        lh.create_table("sales.orders", [{"id": 1}])
        lh.create_table("hr.pay", [{"x": 1}])
        for sql in (
            "CREATE GROUP analysts",
            "CREATE USER bob",
            "ALTER GROUP analysts ADD USER bob",
            "GRANT USE CATALOG ON CATALOG main TO analysts",
            "GRANT USE SCHEMA, SELECT ON SCHEMA sales TO analysts",
        ):
            lh.sql(sql)
        bob = lh.with_principal(Accounts(lh.catalog).principal("bob"))
        assert bob.tables() == ["main.sales.orders"]
        assert bob.sql("SELECT id FROM sales.orders").scalar() == 1
        with pytest.raises(AccessDenied):
            bob.sql("SELECT * FROM hr.pay")
        assert lh.sql("SELECT count(*) FROM system.access.audit").scalar() == 5


def test_failed_logins_are_throttled_per_account_and_address() -> None:
    clock = [0.0]
    throttle = LoginThrottle(limit=3, window=60, lockout=30, clock=lambda: clock[0])
    accounts = Accounts(open_catalog("sqlite://"), throttle=throttle)
    accounts.create("bob", password="right")
    token = accounts.create_token("bob")
    here, there = "10.0.0.7", "10.0.0.8"
    for _ in range(3):
        with pytest.raises(AccessDenied, match="password authentication failed"):
            accounts.authenticate_password("bob", "guess", client=here)
    # locked: even the right password is not checked from here, for 30 s
    with pytest.raises(AccessDenied, match="too many failed logins") as e:
        accounts.authenticate_password("bob", "right", client=here)
    assert e.value.sqlstate == "08004" and "retry in 30 s" in str(e.value)
    assert throttle.retry_after("bob", here) == 30.0
    # bob is not locked out from everywhere, nor are tokens from here
    assert accounts.authenticate_password("bob", "right", client=there).name == "bob"
    assert accounts.authenticate_token(token, client=here).name == "bob"
    clock[0] = 31.0
    assert accounts.authenticate_password("bob", "right", client=here).name == "bob"
    # made-up tokens are counted per address, whatever id they carry
    for i in range(3):
        with pytest.raises(AccessDenied, match="token authentication failed"):
            accounts.authenticate_token(f"mxt_{i:016x}_guess", client=here)
    with pytest.raises(AccessDenied, match="too many failed logins"):
        accounts.authenticate_token(token, client=here)
    assert accounts.authenticate_token(token, client=there).name == "bob"
    # without a throttle nothing is counted
    plain = Accounts(accounts.catalog)
    for _ in range(10):
        with pytest.raises(AccessDenied, match="authentication failed"):
            plain.authenticate_password("bob", "guess", client=here)
    assert plain.authenticate_password("bob", "right", client=here).name == "bob"
