"""MatrixOS's own SQL functions: ``vector_search``, ``text_search``, ``hybrid_search`` (table
functions over Lance tables) and ``embed(text)`` (a scalar).

They are evaluated before DuckDB sees the statement: a search call in ``FROM`` runs through
``engine.embedding.search_table`` on the table the host resolves in the catalog like any other
reference (``FunctionHost.search_target``; filters apply before top-k), and is replaced by a
reference to its Arrow result; ``embed`` of a constant becomes a ``FLOAT[n]`` literal, ``embed``
of a column a vectorised Python UDF.

    SELECT d.title, c._score
    FROM hybrid_search(kb.chunks, 'how do I vacuum', k => 5) AS c
    JOIN docs d ON d.uri = c.uri
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos.ai.embed import get_embedder
from matrixos.catalog.policies import TablePolicy
from matrixos.engine.embedding import search_table, table_embedding
from matrixos.engine.vector_literals import VECTOR
from matrixos.errors import AccessDenied, SQLError

if TYPE_CHECKING:
    import duckdb


@dataclass(frozen=True)
class SearchTarget:
    """The Lance table a search function names, resolved in the catalog.

    Attributes:
        name: Its full name (``main.kb.chunks``), for EXPLAIN.
        location: Where its data is.
        properties: Its catalog properties (the embedding it names, if any).
        storage_options: Lance's storage options for ``location`` (None for a local one).
        policy: The row filters and column masks that apply to the principal asking: the
            filters also run inside the search (before top-k) and ``row_security`` wraps the
            result in them.
    """

    name: str
    location: str
    properties: Mapping[str, str]
    storage_options: dict[str, str] | None = None
    policy: TablePolicy | None = None  # the row filters and masks that apply to the caller


class FunctionHost(Protocol):
    """What the platform functions need of the SQL engine (``SQLEngine`` is one)."""

    def constant(self, node: exp.Expr) -> Any:
        """The value of a constant expression (an argument such as ``k => 5``)."""

    def search_target(self, name: str) -> SearchTarget:
        """The Lance table ``name`` names; ``NotSupported`` for a table of another format."""


SEARCH_FUNCTIONS = {"vector_search": "vector", "text_search": "text", "hybrid_search": "hybrid"}
SCALAR_FUNCTIONS = frozenset({"embed"})
_KWARGS = {"k", "filter", "columns"}
_RESULT = "mx_function_result"
POLICY = "mx_policy"  # a search result's meta: the TablePolicy row_security applies to it


@dataclass
class FunctionResults:
    """Arrow results to register on the statement's cursor, and EXPLAIN lines."""

    tables: dict[str, pa.Table] = field(default_factory=dict)
    udfs: dict[str, str] = field(default_factory=dict)  # DuckDB function name → embedder
    calls: dict[str, SearchCall] = field(default_factory=dict)  # each table's search
    explain: list[str] = field(default_factory=list)

    def install(self, cur: duckdb.DuckDBPyConnection) -> None:
        for name, table in self.tables.items():
            cur.register(name, table)
        for fname, embedder in self.udfs.items():
            _register_embed_udf(cur, fname, embedder)


def is_function_result(node: exp.Table) -> bool:
    return bool(node.meta.get(_RESULT))


def _name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return ""


def expand_functions(host: FunctionHost, tree: exp.Expr) -> FunctionResults:
    """Evaluate the platform functions in ``tree`` in place; return what to register."""
    out = FunctionResults()
    token = f"__mx_fn_{uuid.uuid4().hex[:12]}_"
    for node in list(tree.find_all(exp.Table)):
        fn = node.this
        if not isinstance(fn, exp.Func):
            continue
        mode = SEARCH_FUNCTIONS.get(_name(fn))
        if mode is None:
            continue
        name = f"{token}{len(out.tables)}"
        out.tables[name], policy = _run_search(host, fn, mode, out, name)
        alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(_name(fn)))
        stand_in = exp.Table(this=exp.to_identifier(name, quoted=True), alias=alias)
        stand_in.meta[_RESULT] = True
        if policy is not None:
            stand_in.meta[POLICY] = policy
        node.replace(stand_in)
    for call in list(tree.find_all(exp.Anonymous)):
        if _name(call) not in SCALAR_FUNCTIONS:
            continue
        args = call.expressions
        if len(args) not in (1, 2):
            raise SQLError("embed(text [, embedder]) takes one or two arguments", sql=call.sql())
        embedder = host.constant(args[1]) if len(args) == 2 else None
        if embedder is not None and not isinstance(embedder, str):
            raise SQLError(
                f"embed()'s second argument names an embedder, got {embedder!r}",
                sql=call.sql(),
                hint="e.g. embed(text, 'minilm')",
            )
        text = args[0]
        if not text.find(exp.Column, exp.Query):
            call.replace(_vector_literal(host.constant(text), embedder))
            continue
        fname = f"{token}embed_{len(out.udfs)}"
        out.udfs[fname] = embedder or ""
        call.replace(exp.Anonymous(this=fname, expressions=[text]))
    return out


def _arguments(host: FunctionHost, fn: exp.Func) -> tuple[list[exp.Expr], dict[str, Any]]:
    positional: list[exp.Expr] = []
    kwargs: dict[str, Any] = {}
    for arg in fn.iter_expressions():
        if isinstance(arg, exp.Kwarg | exp.PropertyEQ | exp.EQ) and isinstance(
            arg.this, exp.Var | exp.Column | exp.Identifier
        ):
            key = arg.this.name.lower()
            if key not in _KWARGS:
                raise SQLError(
                    f"{_name(fn)}() has no argument {key!r}; use {sorted(_KWARGS)}", sql=fn.sql()
                )
            kwargs[key] = host.constant(arg.expression)
        else:
            positional.append(arg)
    return positional, kwargs


def _table_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Column | exp.Table):
        return ".".join(p.name for p in node.parts)
    if isinstance(node, exp.Literal) and node.is_string:
        return node.name
    if isinstance(node, exp.Dot):
        return node.sql()
    raise SQLError(f"the first argument must name a table, got {node.sql()}")


def _run_search(
    host: FunctionHost, fn: exp.Func, mode: str, out: FunctionResults, name: str
) -> tuple[pa.Table, TablePolicy | None]:
    call = search_call(host, fn, mode)
    result, policy = call.run()
    out.calls[name] = call
    out.explain.append(
        f"{call.function}({call.table.name}, k={call.k}"
        + (f", filter={call.asked!r}" if call.asked else "")
        + f"): {result.num_rows} rows, evaluated before the query"
    )
    return result, policy


@dataclass(frozen=True)
class SearchCall:
    """One search function call of a statement with its arguments read and its table resolved
    (for the principal asking): ``run`` searches, again with another query when given one (a
    repeated statement's plan, ``engine.sql.search_plans``).

    Attributes:
        function: The function's name (``vector_search``).
        mode: ``vector``, ``text`` or ``hybrid``.
        table: The table searched, with the policy that applies to the caller.
        query: The query (text or a vector).
        k: How many rows.
        asked: The caller's filter.
        filter: What the search filters by (the caller's filter and the policy's row filters).
        columns: The columns fetched (None: all).
        policy: The row filters and masks the result is wrapped in (None: none apply).
        lifted: The query is a vector read before the parse (``vector_literals``).
    """

    function: str
    mode: str
    table: SearchTarget
    query: Any
    k: int
    asked: str | None
    filter: str | None
    columns: tuple[str, ...] | None
    policy: TablePolicy | None
    lifted: bool = False

    def run(self, query: Any = None) -> tuple[pa.Table, TablePolicy | None]:
        """The search's rows (for ``query`` instead of the call's own when given) and the
        policy to wrap them in."""
        q = self.query if query is None else query
        columns = list(self.columns) if self.columns is not None else None

        def search(k: int, filter: str | None) -> pa.Table:
            return search_table(
                self.table.location,
                self.table.properties,
                q,
                k=k,
                mode=self.mode,  # type: ignore[arg-type]
                filter=filter,
                columns=columns,
                storage_options=self.table.storage_options,
            )

        policy = self.policy
        try:
            return search(self.k, self.filter), policy
        except SQLError as e:
            if policy is None or not policy.filters or not e.message.startswith("invalid filter"):
                raise
        # Lance cannot run a row filter (a CASE, some casts): rank more rows without it; the
        # policy's subquery filters them and keeps the best k (fewer when few pass).
        result = search(max(self.k * 20, 1000), self.asked)
        return result, dataclasses.replace(policy, limit=self.k)


def search_call(host: FunctionHost, fn: exp.Func, mode: str) -> SearchCall:
    """The search call ``fn`` with its arguments read and its table resolved by ``host``."""
    positional, kwargs = _arguments(host, fn)
    name = _name(fn)
    if len(positional) < 2:
        raise SQLError(
            f"{name}(table, query, k => 10 [, filter => '…']) needs a table and a query",
            sql=fn.sql(),
        )
    if len(positional) > 3:
        raise SQLError(f"{name}() takes at most 3 positional arguments", sql=fn.sql())
    query_node = positional[1]
    if query_node.find(exp.Column, exp.Query):
        raise SQLError(
            f"the query of {name}() must be a constant (text or a vector); "
            "per-row searches are not supported",
            sql=fn.sql(),
        )
    query = query_node.meta.get(VECTOR)  # a query vector read before the parse
    lifted = query is not None
    if query is None:
        query = host.constant(query_node)
    if len(positional) == 3:
        kwargs.setdefault("k", host.constant(positional[2]))
    k = kwargs.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise SQLError(f"k must be a positive integer, got {k!r}", sql=fn.sql())
    for key in ("filter", "columns"):
        if kwargs.get(key) is not None and not isinstance(kwargs[key], str):
            raise SQLError(f"{key} must be text, got {kwargs[key]!r}", sql=fn.sql())
    table = host.search_target(_table_name(positional[0]))
    columns = kwargs.get("columns")
    wanted = [c.strip() for c in columns.split(",")] if isinstance(columns, str) else None
    filter = asked = kwargs.get("filter")
    policy = table.policy
    if policy is not None:
        filter, wanted, policy = secured_search(table, mode, filter, wanted)
    return SearchCall(
        name,
        mode,
        table,
        query,
        k,
        asked,
        filter,
        tuple(wanted) if wanted is not None else None,
        policy,
        lifted,
    )


def secured_search(
    table: SearchTarget, mode: str, filter: str | None, columns: list[str] | None
) -> tuple[str | None, list[str] | None, TablePolicy]:
    """The ``filter``, ``columns`` and policy of a search on a table with policies for the
    caller: its row filters join the filter (applied before top-k, so k visible rows come
    back), and the columns they and the masks read are fetched too (the policy's ``hidden``
    leaves them out of the result again).

    Refused (``AccessDenied``): a ``filter`` on a masked column (it would match the real
    values), and a search whose ranking reads a masked column (the embedding's text or vector
    column; any masked column of a table without a declared embedding, whose searched columns
    are not known).
    """
    policy = table.policy
    assert policy is not None
    masked = policy.masked
    if masked:
        emb = table_embedding(table.properties)
        ranked = masked if emb is None else {emb.source.lower(), emb.column.lower()} & masked
        if ranked:
            raise AccessDenied(
                f"{mode} search on {table.name} ranks rows by column(s) {sorted(ranked)} "
                "masked for you",
                hint="the table's owner can search it, or drop the mask",
            )
    terms: list[exp.Expr] = []
    if filter:
        try:
            user = sqlglot.condition(filter, dialect="duckdb")
        except SqlglotError as e:
            raise SQLError(f"cannot read the search filter {filter!r}") from e
        used = {c.name.lower() for c in user.find_all(exp.Column)}
        if used & masked:
            raise AccessDenied(
                f"the search filter uses column(s) {sorted(used & masked)} of {table.name}, "
                "masked for you: it would match their real values",
                hint="filter the search's result in the query's WHERE instead (it sees the masks)",
            )
        terms.append(exp.paren(user))
    terms += [exp.paren(sqlglot.parse_one(f, read="duckdb")) for f in policy.filters]
    combined = exp.and_(*terms).sql() if terms else None
    if columns is not None:
        have = {c.lower() for c in columns}
        hidden = sorted(c for c in policy.columns if c.lower() not in have)
        policy = dataclasses.replace(policy, hidden=tuple(hidden))
        columns = [*columns, *hidden]
    return combined, columns, policy


def _vector_literal(text: Any, embedder: str | None) -> exp.Expr:
    if not isinstance(text, str):
        raise SQLError(f"embed() needs text, got {text!r}")
    emb = get_embedder(embedder)
    vec = emb.embed([text])[0]
    values = ", ".join(repr(float(x)) for x in vec)
    return exp.cast(
        exp.maybe_parse(f"[{values}]", dialect="duckdb"),
        exp.DataType.build(f"FLOAT[{emb.dim}]", dialect="duckdb"),
    )


def _register_embed_udf(cur: duckdb.DuckDBPyConnection, fname: str, embedder: str) -> None:
    import duckdb

    emb = get_embedder(embedder or None)

    def embed_batch(texts: pa.Array) -> pa.Array:
        values = [t if isinstance(t, str) else "" for t in texts.to_pylist()]
        vecs = emb.embed(values)
        flat = pa.array(vecs.reshape(-1), pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, emb.dim)

    cur.create_function(  # type: ignore[call-overload]
        fname,
        embed_batch,
        [duckdb.sqltype("VARCHAR")],
        duckdb.sqltype(f"FLOAT[{emb.dim}]"),
        type="arrow",
    )
