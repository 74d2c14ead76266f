"""Accounts and grants in SQL: ``CREATE USER``, ``CREATE GROUP``, ``ALTER GROUP … ADD USER``,
``GRANT``/``REVOKE`` and ``SHOW GRANTS``, over ``Accounts`` (catalog/accounts.py).

The statements (sqlglot leaves most as commands; ``GRANT``/``REVOKE`` it sometimes parses) are
read here with the dialect's tokenizer, so quoted names keep their case and a password is one
string token. No error or result repeats a string literal: a password never comes back.

    CREATE USER name [WITH] [PASSWORD 'pw'] [ADMIN]      CREATE GROUP name
    CREATE SERVICE PRINCIPAL name                         DROP USER|GROUP|SERVICE PRINCIPAL name
    ALTER USER name [WITH] PASSWORD 'pw' | PASSWORD NULL | ADMIN | NOADMIN
    ALTER GROUP g ADD|DROP USER name[, name…]
    GRANT priv[, priv…] ON [CATALOG|SCHEMA|TABLE|VOLUME] name TO account[, account…]
    REVOKE priv[, priv…] ON [CATALOG|SCHEMA|TABLE|VOLUME] name FROM account[, account…]
    SHOW GRANTS [[TO|FOR] account] [ON [CATALOG|SCHEMA|TABLE|VOLUME] name]
    SHOW USERS | SHOW GROUPS

Who may: the embedded user and admins everything; an object's owner (or a holder of MANAGE on
it) grants on it; anyone sees the grants given to them and their groups.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pyarrow as pa
from sqlglot import Dialect, exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

from matrixos.catalog.access import PRIVILEGES, Principal
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.audit import AuditEvent, AuditLog, outcome_of
from matrixos.catalog.base import GrantInfo
from matrixos.catalog.names import TableIdent, check_part, parse_schema
from matrixos.engine.result import Result
from matrixos.engine.sql.frontend import ok
from matrixos.errors import AccountExists, AccountNotFound, SQLError

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService

_KINDS = ("CATALOG", "SCHEMA", "TABLE", "VOLUME")
_ACCOUNT_KINDS = {"USER": "user", "GROUP": "group", "SERVICE PRINCIPAL": "service"}
_PUNCT = {TokenType.COMMA, TokenType.DOT, TokenType.SEMICOLON, TokenType.L_PAREN}


class Words:
    """The tokens of one statement, read front to back (also the row filter and mask
    statements' reader, ``engine.sql.policies``)."""

    def __init__(self, cmd: str, rest: str, dialect: str) -> None:
        # Only the text after the command word: some dialects' tokenizers take all that follows
        # SHOW as one string.
        try:
            self.tokens: list[Token] = Dialect.get_or_raise(dialect).tokenize(rest)
        except SqlglotError as e:
            # the tokenizer's message may quote the text (a password): say where, not what
            raise SQLError("cannot read the statement: an unterminated quote or name") from e
        self.i = 0
        self.object: str | None = None  # what the statement changes, for the audit row
        first = self.tokens[0].text.upper() if self.tokens and _plain(self.tokens[0]) else ""
        self.statement = f"{cmd} {first}" if cmd in ("CREATE", "DROP", "ALTER", "SHOW") else cmd

    def peek(self, n: int = 0) -> str:
        tok = self.tokens[self.i + n] if self.i + n < len(self.tokens) else None
        return tok.text.upper() if tok is not None and _plain(tok) else ""

    def accept(self, *words: str) -> bool:
        if all(self.peek(k) == w for k, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def expect(self, *words: str) -> None:
        if not self.accept(*words):
            raise self.error(" ".join(words))

    def name(self, what: str = "a name") -> list[str]:
        """A dotted name's parts (quoted parts as written)."""
        parts = [self._part(what)]
        while self.i < len(self.tokens) and self.tokens[self.i].token_type == TokenType.DOT:
            self.i += 1
            parts.append(self._part(what))
        return parts

    def names(self, what: str) -> list[str]:
        out = [".".join(self.name(what))]
        while self.i < len(self.tokens) and self.tokens[self.i].token_type == TokenType.COMMA:
            self.i += 1
            out.append(".".join(self.name(what)))
        return out

    def _part(self, what: str) -> str:
        tok = self.tokens[self.i] if self.i < len(self.tokens) else None
        if tok is None or _literal(tok) or tok.token_type in _PUNCT:
            raise self.error(what)
        self.i += 1
        return tok.text

    def secret(self) -> str:
        """A quoted password; an error never shows what stood there instead."""
        tok = self.tokens[self.i] if self.i < len(self.tokens) else None
        if tok is None or tok.token_type not in (TokenType.STRING, TokenType.HEREDOC_STRING):
            raise SQLError(
                f"{self.statement}: PASSWORD must be followed by a quoted string or NULL",
                hint="PASSWORD 'the password' (a ' inside it is written '')",
            )
        self.i += 1
        return tok.text

    def string(self, what: str) -> str:
        """A quoted string (``what`` names it in the error when something else stands there)."""
        tok = self.tokens[self.i] if self.i < len(self.tokens) else None
        if tok is None or tok.token_type not in (TokenType.STRING, TokenType.HEREDOC_STRING):
            raise self.error(what)
        self.i += 1
        return tok.text

    def end(self) -> None:
        if self.i < len(self.tokens) and self.tokens[self.i].token_type != TokenType.SEMICOLON:
            raise self.error("the end of the statement")

    def error(self, wanted: str) -> SQLError:
        tok = self.tokens[self.i] if self.i < len(self.tokens) else None
        got = "the end" if tok is None else "a literal" if _literal(tok) else repr(tok.text)
        return SQLError(
            f"{self.statement}: expected {wanted}, found {got}", hint=_USAGE.get(self.statement)
        )


def _plain(tok: Token) -> bool:
    return tok.token_type != TokenType.IDENTIFIER and not _literal(tok)


def _literal(tok: Token) -> bool:
    """A string of any kind ('…', $$…$$, E'…', X'…') or a number."""
    return tok.token_type.name.endswith("STRING") or tok.token_type == TokenType.NUMBER


def redact_literals(sql: str, dialect: str) -> str | None:
    """``sql`` with every literal replaced by ``?`` (None when it cannot be tokenized: an
    unterminated quote may hide anything).

    Example:
        >>> redact_literals("CREATE USER bob WITH PASSWORD 'it''s' -- x", "duckdb")
        'CREATE USER bob WITH PASSWORD ? -- x'
    """
    try:
        tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    except SqlglotError:
        return None
    out, at = [], 0
    for tok in tokens:
        if _literal(tok):
            out += [sql[at : tok.start], "?"]
            at = tok.end + 1
    return "".join([*out, sql[at:]])


_USAGE = {
    "CREATE USER": "CREATE USER name [WITH PASSWORD '…'] [ADMIN]",
    "GRANT": "GRANT SELECT ON TABLE schema.table TO account",
    "REVOKE": "REVOKE SELECT ON TABLE schema.table FROM account",
    "SHOW GRANTS": "SHOW GRANTS [TO account] [ON TABLE schema.table]",
    "ALTER GROUP": "ALTER GROUP name ADD USER member",
}


class GrantStatements:
    """The engine's handler of account and grant statements."""

    def __init__(self, service: TableService) -> None:
        self.service = service
        self.accounts = Accounts(service.catalog)
        self.audit = AuditLog(service)

    def statement(self, stmt: exp.Expr, dialect: str, principal: Principal) -> Result:
        """A ``GRANT``/``REVOKE`` sqlglot parsed into a tree."""
        text = stmt.sql(dialect=dialect)
        cmd, _, rest = text.partition(" ")
        result = self.command(cmd.upper(), rest, dialect, principal)
        assert result is not None
        return result

    def command(self, cmd: str, rest: str, dialect: str, principal: Principal) -> Result | None:
        """Run the statement ``cmd rest`` if it is one of this module's; else None."""
        head = rest.split(None, 2)
        first = head[0].upper() if head else ""
        second = head[1].upper() if len(head) > 1 else ""
        mine = (
            cmd in ("GRANT", "REVOKE")
            or (cmd == "SHOW" and first in ("GRANTS", "GRANT", "USERS", "GROUPS"))
            or (cmd in ("CREATE", "DROP") and first in ("USER", "GROUP"))
            or (cmd in ("CREATE", "DROP") and (first, second) == ("SERVICE", "PRINCIPAL"))
            or (cmd == "ALTER" and first in ("USER", "GROUP"))
        )
        if not mine:
            return None
        started = time.perf_counter()
        failure: BaseException | None = None
        words = Words(cmd, rest, dialect)
        try:
            return self._run(cmd, words, principal)
        except (AccountExists, AccountNotFound) as e:
            failure = SQLError(e.message, hint=e.hint, sqlstate=e.sqlstate)
            raise failure from None
        except BaseException as e:
            failure = e
            raise
        finally:
            if cmd != "SHOW":  # changes (done or refused) are audited, not listings
                event = AuditEvent(
                    principal.name,
                    words.statement,
                    words.object,
                    outcome_of(failure),
                    protocol="sql",
                    statement=redact_literals(f"{cmd} {rest}", dialect),
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
                self.audit.record(event)

    def _run(self, cmd: str, w: Words, principal: Principal) -> Result:
        if cmd == "CREATE":
            return self._create(w, principal)
        if cmd == "DROP":
            kind = self._account_kind(w)
            if_exists = w.accept("IF", "EXISTS")
            name = w.object = _account(w)
            w.end()
            if not (if_exists and not self.accounts.exists(name)):
                actual = self.accounts.get(name).kind
                if actual != kind:
                    raise SQLError(
                        f"{name} is a {_label(actual).lower()}, not a {_label(kind).lower()}",
                        hint=f"DROP {_label(actual)} {name}",
                    )
                self.accounts.drop(name, by=principal)
            return ok(f"DROP {_label(kind)}")
        if cmd == "ALTER":
            return self._alter(w, principal)
        if cmd in ("GRANT", "REVOKE"):
            return self._grant(cmd, w, principal)
        return self._show(w, principal)

    def _account_kind(self, w: Words) -> str:
        for word, kind in _ACCOUNT_KINDS.items():
            if w.accept(*word.split()):
                return kind
        raise w.error("USER, GROUP or SERVICE PRINCIPAL")

    def _create(self, w: Words, principal: Principal) -> Result:
        kind = self._account_kind(w)
        if_not_exists = w.accept("IF", "NOT", "EXISTS")
        name = w.object = _account(w)
        password, admin = self._options(w, kind)
        w.end()
        if not (if_not_exists and self.accounts.exists(name)):
            self.accounts.create(name, kind, admin=bool(admin), password=password, by=principal)
        return ok(f"CREATE {_label(kind)}")

    def _options(self, w: Words, kind: str) -> tuple[str | None, bool | None]:
        """``[WITH] [PASSWORD 'pw' | PASSWORD NULL] [ADMIN | NOADMIN]``, in any order."""
        w.accept("WITH")
        password: str | None = None
        admin: bool | None = None
        while w.peek():
            if w.accept("PASSWORD"):
                password = "" if w.accept("NULL") else w.secret()
            elif w.accept("ADMIN") or w.accept("SUPERUSER"):
                admin = True
            elif w.accept("NOADMIN") or w.accept("NOSUPERUSER"):
                admin = False
            elif w.accept("LOGIN"):
                pass  # PostgreSQL's word for what every user and service principal may do
            else:
                break
        if password is not None and kind == "group":
            raise SQLError("a group cannot have a password: its members sign in")
        return password, admin

    def _alter(self, w: Words, principal: Principal) -> Result:
        if w.accept("GROUP"):
            group = w.object = _account(w)
            add = w.accept("ADD")
            if not add:
                w.expect("DROP")
            if not (w.accept("USER") or w.accept("GROUP")):
                w.accept("SERVICE", "PRINCIPAL")
            members = [_check(m) for m in w.names("a member's name")]
            w.end()
            for member in members:
                if add:
                    self.accounts.add_member(group, member, by=principal)
                else:
                    self.accounts.remove_member(group, member, by=principal)
            return ok("ALTER GROUP")
        w.expect("USER")
        name = w.object = _account(w)
        password, admin = self._options(w, "user")
        w.end()
        if password is None and admin is None:
            raise w.error("PASSWORD '…', PASSWORD NULL, ADMIN or NOADMIN")
        if admin is not None:
            self.accounts.set_admin(name, admin, by=principal)
        if password is not None:
            self.accounts.set_password(name, password or None, by=principal)
        return ok("ALTER USER")

    def _grant(self, cmd: str, w: Words, principal: Principal) -> Result:
        privileges = [self._privilege(w)]
        while w.i < len(w.tokens) and w.tokens[w.i].token_type == TokenType.COMMA:
            w.i += 1
            privileges.append(self._privilege(w))
        w.expect("ON")
        kind, securable = self._securable(w)
        w.object = securable
        w.expect("TO" if cmd == "GRANT" else "FROM")
        grantees = [_check(g) for g in w.names("an account name")]
        w.end()
        changed = 0
        for grantee in grantees:
            for privilege in privileges:
                change = self.accounts.grant if cmd == "GRANT" else self.accounts.revoke
                changed += change(privilege, securable, grantee, kind=kind, by=principal)
        return ok(cmd, changed=changed)

    def _privilege(self, w: Words) -> str:
        for privilege in (*PRIVILEGES, "ALL"):
            if w.accept(*privilege.split()):
                if privilege == "ALL":
                    w.accept("PRIVILEGES")
                return privilege
        raise w.error("a privilege (" + ", ".join(PRIVILEGES) + ")")

    def _securable(self, w: Words) -> tuple[str | None, str]:
        """``(kind, full name)``; without a kind, a table's or a volume's (looked up)."""
        said = next((k.lower() for k in _KINDS if w.accept(k)), None)
        kind = said or "table"
        parts = w.name(f"a {kind} name")
        if kind == "catalog":
            if len(parts) != 1:
                raise SQLError(f"{'.'.join(parts)} is not a catalog name")
            return kind, check_part(parts[0], "catalog")
        if kind == "schema":
            if len(parts) > 2:
                raise SQLError(f"{'.'.join(parts)} is not a schema name")
            c, s = parse_schema(".".join(check_part(p) for p in parts))
            return kind, f"{c}.{s}"
        if len(parts) > 3:
            raise SQLError(f"{'.'.join(parts)} is not a {kind} name")
        padded: list[str | None] = [None] * (3 - len(parts)) + list(parts)
        return said, str(TableIdent.from_parts(padded[0], padded[1], parts[-1]))

    def _show(self, w: Words, principal: Principal) -> Result:
        if w.accept("USERS") or w.accept("GROUPS"):
            groups = w.tokens[w.i - 1].text.upper() == "GROUPS"
            w.end()
            return self._show_accounts(groups, principal)
        if not w.accept("GRANTS"):
            w.expect("GRANT")
        grantee = None
        if w.peek() != "ON" and w.i < len(w.tokens):
            if not w.accept("TO"):
                w.accept("FOR")
            grantee = _check(".".join(w.name("an account name")))
        securable = None
        if w.accept("ON"):
            securable = self._securable(w)[1]
        w.end()
        rows = self.accounts.grants(grantee, securable)
        if not principal.is_admin and not (
            securable and self.accounts.may_manage(principal, securable)
        ):
            mine = {principal.name, *principal.groups}
            rows = [g for g in rows if g.grantee in mine]
        return _grants_result(rows)

    def _show_accounts(self, groups: bool, principal: Principal) -> Result:
        accounts = [
            a
            for a in self.accounts.list()
            if (a.kind == "group") == groups
            and (principal.is_admin or a.name in (principal.name, *principal.groups))
        ]
        members = self.accounts.catalog.list_members()
        return Result.from_table(
            pa.table(
                {
                    "name": pa.array([a.name for a in accounts], pa.string()),
                    "kind": pa.array([a.kind for a in accounts], pa.string()),
                    "admin": pa.array([a.admin for a in accounts], pa.bool_()),
                    "groups" if not groups else "members": pa.array(
                        [
                            sorted(g for g, m in members if m == a.name)
                            if not groups
                            else sorted(m for g, m in members if g == a.name)
                            for a in accounts
                        ],
                        pa.list_(pa.string()),
                    ),
                    "created_at": pa.array(
                        [a.created_at for a in accounts], pa.timestamp("us", tz="UTC")
                    ),
                }
            ),
            statement="SHOW",
        )


def without_secrets(err: SQLError, sql: str) -> SQLError:
    """``err``, or when it repeats the text of a statement that sets a password (a syntax error
    in ``CREATE USER … PASSWORD '…``), an error that does not."""
    if err.sql is None or not _PASSWORD.search(sql):
        return err
    return SQLError(
        "cannot parse a statement that sets a password (its text is not repeated)",
        hint=_USAGE["CREATE USER"],
        sqlstate=err.sqlstate,
    )


_PASSWORD = re.compile(r"\bPASSWORD\b", re.IGNORECASE)


def _grants_result(rows: list[GrantInfo]) -> Result:
    columns = {
        "principal": [g.grantee for g in rows],
        "privilege": [g.privilege for g in rows],
        "object_type": [g.kind.upper() for g in rows],
        "object_name": [g.securable for g in rows],
        "granted_by": [g.granted_by for g in rows],
    }
    return Result.from_table(
        pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()}), statement="SHOW"
    )


def _account(w: Words) -> str:
    return _check(".".join(w.name("an account name")))


def _check(name: str) -> str:
    if not name:
        raise SQLError("an account name cannot be empty")
    return name


def _label(kind: str) -> str:
    return {"user": "USER", "group": "GROUP", "service": "SERVICE PRINCIPAL"}[kind]
