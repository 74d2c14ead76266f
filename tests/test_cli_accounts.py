"""``matrixos accounts`` and ``matrixos tokens`` as a user runs them: real processes on a real
warehouse, the token printed once and usable, never listed or stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.errors import AccessDenied


@pytest.fixture
def wh(tmp_path: Path) -> Path:
    path = tmp_path / "wh"
    with mx.connect(str(path)) as lh:
        lh.create_table("sales.orders", [{"id": 1}])
    return path


def matrixos(wh: Path, *args: str, stdin: str = "", code: int = 0) -> subprocess.CompletedProcess:
    # Piped output takes the width its rows need unless COLUMNS says otherwise: keep the
    # runner's own terminal size out of it.
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MATRIXOS_") and k not in ("COLUMNS", "LINES")
    }
    environ.update(MATRIXOS_HOME=str(wh.parent / "home"), PYTHONIOENCODING="utf-8")
    p = subprocess.run(
        [sys.executable, "-m", "matrixos.cli", "--warehouse", str(wh), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )
    assert p.returncode == code, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    assert "Traceback" not in p.stderr + p.stdout
    return p


def test_accounts_create_list_drop(wh: Path) -> None:
    matrixos(wh, "accounts", "create", "alice", "--admin")
    matrixos(wh, "accounts", "create", "bob", "--password-stdin", stdin="pa ss\n")
    matrixos(wh, "accounts", "create", "analysts", "--group")
    matrixos(wh, "accounts", "create", "etl", "--service")
    matrixos(wh, "accounts", "add-member", "analysts", "bob")
    listed = json.loads(matrixos(wh, "accounts", "list", "-f", "json").stdout)
    assert [(r["name"], r["kind"], r["admin"], r["groups"], r["password"]) for r in listed] == [
        ("alice", "user", True, "", False),
        ("analysts", "group", False, "", False),
        ("bob", "user", False, "analysts", True),
        ("etl", "service", False, "", False),
    ]
    with mx.connect(str(wh)) as lh:
        assert Accounts(lh.catalog).authenticate_password("bob", "pa ss").name == "bob"
    err = matrixos(wh, "accounts", "create", "bob", code=1).stderr
    assert "error: account 'bob' already exists" in err
    err = matrixos(wh, "accounts", "create", "x", "--password-stdin", code=2).stderr
    assert "stdin held no password" in err
    matrixos(wh, "accounts", "drop", "etl")
    with mx.connect(str(wh)) as lh:
        assert [a.name for a in Accounts(lh.catalog).list()] == ["alice", "analysts", "bob"]
        audit = lh.sql(
            "SELECT action, object, outcome, protocol FROM system.access.audit ORDER BY event_time"
        ).fetchall()
    assert audit == [
        ("CREATE USER", "alice", "ok", "cli"),
        ("CREATE USER", "bob", "ok", "cli"),
        ("CREATE GROUP", "analysts", "ok", "cli"),
        ("CREATE SERVICE PRINCIPAL", "etl", "ok", "cli"),
        ("ALTER GROUP", "analysts", "ok", "cli"),
        ("CREATE USER", "bob", "failed: AccountExists", "cli"),
        ("DROP ACCOUNT", "etl", "ok", "cli"),
    ]


def test_tokens_are_printed_once_and_work(wh: Path) -> None:
    with mx.connect(str(wh)) as lh:
        lh.sql("CREATE USER bob")
        lh.sql("GRANT USE CATALOG ON CATALOG main TO bob")
        lh.sql("GRANT USE SCHEMA, SELECT ON SCHEMA sales TO bob")
    made = matrixos(wh, "tokens", "create", "bob", "--expires-in", "30d")
    token = made.stdout.strip()
    assert token.startswith("mxt_") and "\n" not in token
    assert "cannot be shown again" in made.stderr and token not in made.stderr

    with mx.connect(str(wh)) as lh:
        bob = lh.with_principal(Accounts(lh.catalog).authenticate_token(token))
        assert bob.sql("SELECT count(*) FROM sales.orders").scalar() == 1

    (row,) = json.loads(matrixos(wh, "tokens", "list", "bob", "-f", "json").stdout)
    assert row["account"] == "bob" and row["expires_at"] and row["last_used_at"]
    assert row["revoked_at"] is None and token.split("_", 2)[2] not in json.dumps(row)
    # nothing on disk holds the secret (the catalog, its WAL, the warehouse's files)
    secret = token.split("_", 2)[2].encode()
    for path in wh.parent.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path

    matrixos(wh, "tokens", "revoke", row["id"])
    with mx.connect(str(wh)) as lh:
        assert Accounts(lh.catalog).tokens("bob")[0].revoked_at is not None
        with pytest.raises(AccessDenied):
            Accounts(lh.catalog).authenticate_token(token)
    err = matrixos(wh, "tokens", "create", "bob", "--expires-in", "soon", code=1).stderr
    assert "'soon' is not a duration" in err
    with mx.connect(str(wh)) as lh:
        audit = lh.sql(
            "SELECT action, object, outcome FROM system.access.audit "
            "WHERE protocol = 'cli' ORDER BY event_time"
        ).fetchall()
    assert audit == [
        ("CREATE TOKEN", f"bob {row['id']}", "ok"),
        ("REVOKE TOKEN", row["id"], "ok"),
        ("CREATE TOKEN", "bob", "failed: ConfigError"),
    ]
