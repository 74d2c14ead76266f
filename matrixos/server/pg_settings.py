"""Client parameters over the PostgreSQL wire: ``SET``/``RESET``/``SHOW`` of what drivers and
psql send are answered by the connection and never reach the engine; any other ``SET`` (an
engine setting: ``memory_limit``, ``enable_external_access``, …) is refused with 42501.

Example:
    >>> sorted(CLIENT_SETTINGS)[:3]
    ['application_name', 'bytea_output', 'client_encoding']
"""

from __future__ import annotations

import re

from pg_mimic import ResultColumn, Statement, StaticStatement
from pg_mimic.middleware import MiddlewareContext, session_functions
from sqlglot import exp

from matrixos.errors import AccessDenied
from matrixos.server.pg_types import pg_error

# Client parameters drivers and psql set (psycopg: client_encoding, DateStyle, TimeZone;
# JDBC: extra_float_digits, application_name; BI tools: search_path, statement_timeout).
# Accepted and shown back; they never reach the engine. Any other SET is refused.
CLIENT_SETTINGS = {
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "datestyle",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "intervalstyle",
    "lock_timeout",
    "search_path",
    "session characteristics",
    "standard_conforming_strings",
    "statement_timeout",
    "time zone",
    "timezone",
    "transaction isolation level",
}
_SET_RE = re.compile(
    r"^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?(.+?)\s*(?:\bTO\b|=|\s)\s*(.*?)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)
_RESET_RE = re.compile(r"^\s*RESET\s+(\w+|ALL)\s*;?\s*$", re.IGNORECASE)
_SHOW_RE = re.compile(r"^\s*SHOW\s+(.+?)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
# SHOW statements the engine answers (the catalog); any other SHOW reads a client parameter.
_ENGINE_SHOW = re.compile(
    r"^(TABLES|SCHEMAS|DATABASES|CATALOGS|GRANTS|VOLUMES|COLUMNS|CREATE|TBLPROPERTIES|USERS|"
    r"GROUPS|TOKENS|PARTITIONS|ROW\s+FILTERS|MASKS|POLICIES)\b",
    re.IGNORECASE,
)


async def settings(ctx: MiddlewareContext) -> Statement | None:
    """SET/RESET/SHOW of client parameters; any other SET is refused (42501)."""
    conn = ctx.connection
    if m := _RESET_RE.match(ctx.sql):
        name = m.group(1).lower()
        return StaticStatement(
            "RESET",
            None,
            [],
            conn.session_vars.clear if name == "all" else lambda: conn.session_vars.pop(name, None),
        )
    if m := _SET_RE.match(ctx.sql):
        name = " ".join(m.group(1).lower().split()).strip('"')
        if name not in CLIENT_SETTINGS:
            raise pg_error(
                AccessDenied(
                    f"setting {name!r} may not be changed over the wire",
                    hint="client parameters (client_encoding, DateStyle, TimeZone, "
                    "search_path, application_name, …) may be set; engine settings may not",
                )
            )
        value = m.group(2).strip().strip("'\"")

        def apply() -> None:
            conn.session_vars[name] = value

        return StaticStatement("SET", None, [], apply)
    m = _SHOW_RE.match(ctx.sql)
    if m and not _ENGINE_SHOW.match(m.group(1)):
        name = m.group(1).strip('"').lower()
        value = conn.session_vars.get(name) or conn.server.parameter_status.get(
            _PARAMETER_CASE.get(name, name), _SHOW_DEFAULTS.get(name, "")
        )
        return StaticStatement("SHOW", [ResultColumn(name, 25)], [(value,)])
    return None


_PARAMETER_CASE = {
    "datestyle": "DateStyle",
    "timezone": "TimeZone",
    "intervalstyle": "IntervalStyle",
}
_SHOW_DEFAULTS = {
    "search_path": '"$user", public',
    "transaction isolation level": "read committed",
    "transaction_isolation": "read committed",
    "max_identifier_length": "63",
    "is_superuser": "off",
}


async def qualified_session_functions(ctx: MiddlewareContext) -> Statement | None:
    """``SELECT pg_catalog.set_config(…)``, ``pg_catalog.current_setting(…)``, … (pg_dump and
    some drivers qualify them): answered like their unqualified spelling."""
    tree = ctx.select_without_tables()
    if tree is None:
        return None
    dots = [
        d
        for d in tree.find_all(exp.Dot)
        if isinstance(d.this, exp.Identifier)
        and d.this.name.lower() == "pg_catalog"
        and isinstance(d.expression, exp.Func)
    ]
    if not dots:
        return None
    tree = tree.copy()
    for d in list(tree.find_all(exp.Dot)):
        if isinstance(d.this, exp.Identifier) and d.this.name.lower() == "pg_catalog":
            d.replace(d.expression)
    plain = MiddlewareContext(ctx.connection, tree.sql(dialect="postgres"), ctx.param_oids)
    answered: Statement | None = await session_functions(plain)
    return answered
