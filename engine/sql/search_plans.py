"""Plans of repeated searches: ``SELECT … FROM vector_search(t, [<vector>], k => 10) …`` or
``… text_search(t, '<text>') …`` sent again with another query runs only the search and what
the statement does with its rows.

A search statement's text differs at each call (its query), so the plan cache
(``engine.sql.plans``, keyed by the text) never sees it twice. Here the key is the text
around the query (a vector: ``vector_literals.split``, DuckDB's dialect, where vectors are read
before the parse; else the one string literal or list of numbers, ``[…]`` or ``ARRAY[…]``,
standing alone as a search function's query, found by the dialect's tokenizer: PostgreSQL's
and Snowflake's statements keep plans too, and ``[…]`` and ``ARRAY[…]`` share one), the
dialect, the engine asked and the principal. The plan is kept when the statement reads one
search function, whose query was that vector as read or evaluated to that value, and folded
nothing volatile; it may also read tables (a search joined with
them), as a plan of ``engine.sql.plans`` reads them. It holds the resolved search
(``functions.SearchCall``: table, k, filter, columns, the caller's policy), the DuckDB SQL over
its result and what that SQL reads besides (tables at versions, the datasets of their files on
an object store). It depends on the catalog (entries, grants, policies: its change counter)
and on those tables' versions: the search reads the searched table's latest version itself
(the ANN cache follows appends and deletes). A run checks the counter and the tables, searches
with the new query and runs the SQL over the rows; any difference (another counter, a table
at another version, the search raising, a policy the search had to treat otherwise) plans the
statement again, which reports what is wrong as planning always does.

The common shapes (``SELECT <columns> FROM vector_search(…) [AS a] [WHERE <comparisons of a
column with a literal>] [ORDER BY <columns>] [LIMIT n] [OFFSET m]`` with no policy wrapping the
rows) skip DuckDB too: a few Arrow compute calls do the same. The first run of such a plan goes
through DuckDB and compares the two answers; the Arrow program is used only when they agree.

Example:
    >>> search_key("SELECT 1", "duckdb", "auto", None) is None  # no search: no key
    True
    >>> a = search_key("SELECT * FROM text_search(t, 'cats') AS r", "postgres", "auto", None)
    >>> b = search_key("SELECT * FROM text_search(t, 'it''s') AS r", "postgres", "auto", None)
    >>> a[0] == b[0], a[1], b[1]
    (True, 'cats', "it's")
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from matrixos._lru import LRU
from matrixos.engine.functions import SEARCH_FUNCTIONS, FunctionResults, SearchCall
from matrixos.engine.result import Result
from matrixos.engine.sql.plans import MAX_PLANS, MAX_TEXT, TableRead
from matrixos.engine.vector_literals import split
from matrixos.errors import MatrixOSError

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.engine.sql.local import LocalRunner

_DIALECTS = frozenset({"duckdb"})  # where vector_literals reads vectors before the parse


def search_key(
    sql: str, dialect: str, engine: str, principal: Principal | None
) -> tuple[Hashable, Any] | None:
    """The key a repeated search statement's plan is kept under and its query (a vector: a
    list of floats; a text); None for any other statement (no search function, not exactly
    one query vector or string-literal query, an engine whose plans are not kept, a text too
    long)."""
    if engine not in ("auto", "local") or len(sql) > MAX_TEXT:
        return None
    lowered = sql.lower()
    if not any(name in lowered for name in SEARCH_FUNCTIONS):
        return None
    kind = dialect.lower()
    if kind in _DIALECTS:
        pieces, numbers = split(sql)
        if len(numbers) > 1:
            return None
        if numbers:
            try:
                vector = [float(x) for x in numbers[0].split(",")]
            except ValueError:
                return None
            return ("search", "vector", pieces, kind, engine, principal), vector
    found = _text_query(sql, dialect)
    if found is None:
        return None
    pieces, query = found
    shape = "text" if isinstance(query, str) else "list"
    return ("search", shape, pieces, kind, engine, principal), query


def _text_query(sql: str, dialect: str) -> tuple[tuple[str, str], str | list[float]] | None:
    """The text around the one query that stands alone as a search function's second argument
    and its value, read by the dialect's tokenizer (its quoting and escapes): a string literal
    (``text_search(t, 'how do I vacuum', k => 5)``) or a list of numbers (``[…]``,
    ``ARRAY[…]``: a vector in a dialect whose vectors are not read before the parse); None when
    there is not exactly one."""
    try:
        tokens = sqlglot.Dialect.get_or_raise(dialect).tokenize(sql)
    except (SqlglotError, ValueError):
        return None  # the parse reports it
    found: list[tuple[int, int, str | list[float]]] = []
    for i, tok in enumerate(tokens[:-3]):
        if (
            tok.text.lower() not in SEARCH_FUNCTIONS
            or tokens[i + 1].token_type != TokenType.L_PAREN
        ):
            continue
        j = i + 2  # the table's name: names, dots or one string, up to the first comma
        while j < len(tokens) and tokens[j].token_type in _NAME_TOKENS:
            j += 1
        if j + 2 >= len(tokens) or tokens[j].token_type != TokenType.COMMA:
            continue
        query = tokens[j + 1]
        if query.token_type == TokenType.STRING:
            if tokens[j + 2].token_type in _ARGUMENT_END:
                found.append((query.start, query.end, query.text))
            continue
        vector = _numbers(tokens, j + 1)
        if vector is not None:
            end, values = vector
            found.append((query.start, tokens[end].end, values))
    if len(found) != 1:
        return None
    start, end, value = found[0]
    return (sql[:start], sql[end + 1 :]), value


def _numbers(tokens: list[Any], i: int) -> tuple[int, list[float]] | None:
    """The list of numbers (``[1, -2.5]``, ``ARRAY[…]``) whose first token is ``tokens[i]``
    when it stands alone as an argument: the index of its closing bracket and its values."""
    if tokens[i].token_type == TokenType.ARRAY:
        i += 1
    if i >= len(tokens) or tokens[i].token_type != TokenType.L_BRACKET:
        return None
    values: list[float] = []
    i += 1
    while i + 1 < len(tokens):
        sign = 1.0
        if tokens[i].token_type in (TokenType.DASH, TokenType.PLUS):
            sign = -1.0 if tokens[i].token_type == TokenType.DASH else 1.0
            i += 1
        if tokens[i].token_type != TokenType.NUMBER:
            return None
        try:
            values.append(sign * float(tokens[i].text))
        except ValueError:
            return None
        following = tokens[i + 1].token_type if i + 1 < len(tokens) else None
        if following == TokenType.R_BRACKET:
            after = tokens[i + 2].token_type if i + 2 < len(tokens) else None
            return (i + 1, values) if after in _ARGUMENT_END else None
        if following != TokenType.COMMA:
            return None
        i += 2
    return None


def _same_query(asked: Any, query: Any) -> bool:
    """Whether a search's query (as planning evaluated it) is the value read from the text."""
    if isinstance(asked, str):
        return isinstance(query, str) and query == asked
    try:
        return len(query) == len(asked) and all(
            float(a) == b for a, b in zip(query, asked, strict=True)
        )
    except (TypeError, ValueError):
        return False


_NAME_TOKENS = frozenset({TokenType.VAR, TokenType.DOT, TokenType.STRING, TokenType.IDENTIFIER})
_ARGUMENT_END = frozenset({TokenType.COMMA, TokenType.R_PAREN})


@dataclass
class SearchPlan:
    """A search statement's plan: the search, the SQL over its rows (scanned under ``name``),
    the catalog counter it was made at, the tables it reads besides (``reads``: checked
    before each run, ``locations``: the directories its cursor must allow, ``sources``: the
    datasets of their object-store files by name), and the Arrow program of a common shape
    (``checked`` once its answer matched DuckDB's)."""

    counter: int
    call: SearchCall
    name: str
    sql: str
    fast: ArrowProgram | None = None
    checked: bool = False
    reads: tuple[TableRead, ...] = ()
    locations: tuple[str, ...] = ()
    sources: tuple[tuple[str, Any], ...] = ()


# Whether a plan's tables are still at the versions it read (filling in the Arrow sources of
# their pending rows by name): the SQL engine's check of its own kept plans.
Current = Callable[[tuple[TableRead, ...], dict[str, Any]], bool]


class SearchPlans:
    """Search plans by ``search_key``; thread-safe."""

    def __init__(self, maxsize: int = MAX_PLANS) -> None:
        self._plans: LRU[Hashable, SearchPlan] = LRU(maxsize)
        self._lock = threading.Lock()
        self._asked = threading.local()  # the key and query of the statement on this thread

    def clear(self) -> None:
        self._plans.clear()

    def keep(
        self,
        key: Hashable,
        counter: int,
        sql: str,
        tree: exp.Expr,
        functions: FunctionResults,
        reads: tuple[TableRead, ...] = (),
        sources: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        """Keep the plan of a statement that read one search's rows (and ``reads``, with the
        datasets ``sources``), when that search's query was the one its key left out."""
        if len(functions.tables) != 1 or functions.udfs or len(functions.calls) != 1:
            return
        ((name, call),) = functions.calls.items()
        asked = getattr(self._asked, "query", None)
        if asked is None or asked[0] != key:
            return
        # A vector read before the parse is the query when the search got it as read (not
        # inside an expression); a query the tokenizer found stands alone as the argument, so
        # it is the query when planning evaluated it to the same value.
        read_before = isinstance(key, tuple) and key[1] == "vector"
        if not (call.lifted if read_before else _same_query(asked[1], call.query)):
            return  # its query is not the key's (that one stands elsewhere)
        table = functions.tables[name]
        fast = None
        if call.policy is None and not reads:
            fast = ArrowProgram.of(tree, name, table.schema)
        locations = tuple(r.location for r in reads)
        plan = SearchPlan(counter, call, name, sql, fast, False, reads, locations, sources)
        self._plans.put(key, plan)

    def run(
        self,
        key: Hashable,
        query: Any,
        counter: int,
        local: LocalRunner,
        text: Callable[[], str],
        current: Current | None = None,
    ) -> Result | None:
        """The statement kept under ``key`` run with ``query``; None when there is no plan or
        it no longer holds (it is dropped: the caller plans the statement again, and
        ``keep`` takes its plan only for this key and query). ``current`` checks the tables
        the plan reads besides the search."""
        self._asked.query = (key, query)
        plan = self._plans.get(key)
        if plan is None:
            return None
        if plan.counter != counter:
            self._plans.pop(key)
            return None
        sources: dict[str, Any] = {}
        if plan.reads and (current is None or not current(plan.reads, sources)):
            self._plans.pop(key)
            return None
        try:
            rows, policy = plan.call.run(query)
        except MatrixOSError:
            self._plans.pop(key)  # planning again reports it as planning does
            return None
        if policy != plan.call.policy:
            self._plans.pop(key)
            return None
        fast = plan.fast
        if fast is not None and plan.checked:
            result = Result.from_table(fast.run(rows))
            result.stats["executor"] = "arrow"  # the common shape, without DuckDB
        else:
            sources.update(plan.sources)
            sources[plan.name] = rows
            result = local.run_sql(plan.sql, plan.locations, text, sources)
            if fast is not None:
                expected = result.to_arrow()
                with self._lock:
                    plan.fast = fast.settled(rows, expected)
                    plan.checked = True
                result = Result.from_table(expected)
        result.stats.update(engine="local", plan="cached")
        return result


# -- the Arrow program of a common shape ------------------------------------------------------

_COMPARISONS: dict[type[exp.Expr], Callable[[Any, Any], Any]] = {
    exp.EQ: operator.eq,
    exp.NEQ: operator.ne,
    exp.GT: operator.gt,
    exp.GTE: operator.ge,
    exp.LT: operator.lt,
    exp.LTE: operator.le,
}
_MIRRORED: dict[type[exp.Expr], type[exp.Expr]] = {
    exp.EQ: exp.EQ,
    exp.NEQ: exp.NEQ,
    exp.GT: exp.LT,
    exp.GTE: exp.LTE,
    exp.LT: exp.GT,
    exp.LTE: exp.GTE,
}
# Select arguments the program carries out; any other one set leaves the statement to DuckDB.
_HANDLED = frozenset({"expressions", "from_", "where", "order", "limit", "offset"})


class _Unsupported(Exception):
    """The statement is not of a shape the Arrow program handles."""


@dataclass(frozen=True)
class ArrowProgram:
    """What a statement does with one search result, as Arrow compute: a filter, a sort
    (column, order, where nulls go), a slice, then the columns it selects (input column, output
    name), cast to ``schema`` (what DuckDB returned, once known). A pyarrow that cannot run it
    fails the comparison with DuckDB's answer: the plan then keeps to DuckDB."""

    where: pc.Expression | None
    sort: tuple[tuple[str, str, str], ...]
    offset: int
    limit: int | None
    columns: tuple[tuple[str, str], ...]
    schema: pa.Schema | None = None

    @classmethod
    def of(cls, tree: exp.Expr, name: str, schema: pa.Schema) -> ArrowProgram | None:
        """The program of ``tree`` over the search result scanned as ``name`` (of
        ``schema``), or None when the statement is not of a handled shape."""
        try:
            return _program(tree, name, schema)
        except _Unsupported:
            return None

    def run(self, rows: pa.Table) -> pa.Table:
        """The statement's answer over the search's ``rows``."""
        if self.where is not None:
            rows = rows.filter(self.where)
        if self.sort:
            rows = rows.sort_by(list(self.sort))
        if self.offset or self.limit is not None:
            end = rows.num_rows if self.limit is None else self.offset + self.limit
            rows = rows.slice(self.offset, max(0, end - self.offset))
        arrays = [rows.column(source) for source, _ in self.columns]
        out = pa.Table.from_arrays(arrays, names=[n for _, n in self.columns])
        if self.schema is not None and out.schema != self.schema:
            out = out.cast(self.schema)
        return out

    def settled(self, rows: pa.Table, expected: pa.Table) -> ArrowProgram | None:
        """This program with DuckDB's schema, when its answer over ``rows`` is ``expected``
        (DuckDB's); else None."""
        program = ArrowProgram(
            self.where,
            self.sort,
            self.offset,
            self.limit,
            self.columns,
            expected.schema,
        )
        try:
            ok = program.run(rows).equals(expected)
        except (pa.ArrowException, ValueError, TypeError):
            ok = False
        return program if ok else None


def _program(tree: exp.Expr, name: str, schema: pa.Schema) -> ArrowProgram:
    if not isinstance(tree, exp.Select):
        raise _Unsupported
    if any(v for k, v in tree.args.items() if k not in _HANDLED):
        raise _Unsupported  # joins, GROUP BY, DISTINCT, windows, WITH, …
    source = tree.args["from_"].this
    if (
        not isinstance(source, exp.Table)
        or source.name != name
        or any(v for k, v in source.args.items() if k not in ("this", "alias"))
    ):
        raise _Unsupported
    alias = source.args.get("alias")
    if alias is not None and alias.args.get("columns"):
        raise _Unsupported
    qualifier = (alias.name if alias is not None else name).lower()
    resolve = _Resolver(schema, qualifier)
    columns: list[tuple[str, str]] = []
    for node in tree.expressions:
        if isinstance(node, exp.Star) or (
            isinstance(node, exp.Column) and isinstance(node.this, exp.Star)
        ):
            if isinstance(node, exp.Column):
                resolve.qualified(node)
            if any(v for k, v in node.args.items() if k not in ("this", "table")):
                raise _Unsupported  # * EXCLUDE / REPLACE
            columns += [(f, f) for f in schema.names]
        elif isinstance(node, exp.Alias) and isinstance(node.this, exp.Column):
            columns.append((resolve.column(node.this), node.alias))
        elif isinstance(node, exp.Column):
            columns.append((resolve.column(node), node.name))
        else:
            raise _Unsupported
    outputs = {out.lower(): src for src, out in columns}
    where = tree.args.get("where")
    condition = _condition(where.this, resolve) if where is not None else None
    sort: list[tuple[str, str, str]] = []
    order = tree.args.get("order")
    for ordered in order.expressions if order is not None else []:
        if not isinstance(ordered, exp.Ordered) or not isinstance(ordered.this, exp.Column):
            raise _Unsupported
        column = resolve.column(ordered.this)
        aliased = outputs.get(ordered.this.name.lower())
        if not ordered.this.table and aliased is not None and aliased != column:
            raise _Unsupported  # an output name that means another column
        order_by = "descending" if ordered.args.get("desc") else "ascending"
        nulls = "at_start" if ordered.args.get("nulls_first") else "at_end"
        sort.append((column, order_by, nulls))
    return ArrowProgram(
        condition,
        tuple(sort),
        _count(tree.args.get("offset")) or 0,
        _count(tree.args.get("limit")),
        tuple(columns),
    )


class _Resolver:
    """Column references of the statement, as names of the search result's columns."""

    def __init__(self, schema: pa.Schema, qualifier: str) -> None:
        self.schema = schema
        self.qualifier = qualifier
        self.by_lower: dict[str, list[str]] = {}
        for field in schema.names:
            self.by_lower.setdefault(field.lower(), []).append(field)

    def qualified(self, node: exp.Column) -> None:
        if node.args.get("db") or node.args.get("catalog"):
            raise _Unsupported
        if node.table and node.table.lower() != self.qualifier:
            raise _Unsupported

    def column(self, node: exp.Column) -> str:
        self.qualified(node)
        if not isinstance(node.this, exp.Identifier):
            raise _Unsupported
        found = self.by_lower.get(node.name.lower(), [])
        if len(found) != 1:
            raise _Unsupported
        return found[0]

    def type(self, name: str) -> pa.DataType:
        return self.schema.field(name).type


def _condition(node: exp.Expr, resolve: _Resolver) -> pc.Expression:
    """A WHERE condition as an Arrow expression: AND, OR, NOT, IS [NOT] NULL and comparisons
    of a column with a number or string literal (DuckDB's NaN, larger than any number, kept)."""
    if isinstance(node, exp.Paren):
        return _condition(node.this, resolve)
    if isinstance(node, exp.And):
        return _condition(node.this, resolve) & _condition(node.expression, resolve)
    if isinstance(node, exp.Or):
        return _condition(node.this, resolve) | _condition(node.expression, resolve)
    if isinstance(node, exp.Not):
        return ~_condition(node.this, resolve)
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        if not isinstance(node.this, exp.Column):
            raise _Unsupported
        return pc.field(resolve.column(node.this)).is_null()
    kind = type(node)
    if kind not in _COMPARISONS:
        raise _Unsupported
    left, right = node.this, node.expression
    if isinstance(right, exp.Column) and not isinstance(left, exp.Column):
        left, right, kind = right, left, _MIRRORED[kind]
    if not isinstance(left, exp.Column):
        raise _Unsupported
    column = resolve.column(left)
    column_type = resolve.type(column)
    value = _literal(right, column_type)
    out: pc.Expression = _COMPARISONS[kind](pc.field(column), value)
    if pa.types.is_floating(column_type) and kind in (exp.GT, exp.GTE, exp.NEQ):
        out = out | pc.field(column).is_nan()  # NaN: larger than any number in DuckDB
    return out


def _literal(node: exp.Expr, column_type: pa.DataType) -> Any:
    """A literal compared with a column of ``column_type``: a number with a number, a string
    with a string (anything else, a cast in DuckDB, is left to DuckDB)."""
    negative = isinstance(node, exp.Neg)
    if negative:
        node = node.this
    if not isinstance(node, exp.Literal):
        raise _Unsupported
    if node.is_string:
        if negative or not (
            pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
        ):
            raise _Unsupported
        return node.this
    if not (pa.types.is_integer(column_type) or pa.types.is_floating(column_type)):
        raise _Unsupported
    text = node.this
    try:
        value: float = int(text) if text.isdigit() else float(text)
    except ValueError as e:
        raise _Unsupported from e
    return -value if negative else value


def _count(node: exp.Expr | None) -> int | None:
    """The number of a LIMIT or OFFSET (None: none)."""
    if node is None:
        return None
    value = node.args.get("expression")
    if any(v for k, v in node.args.items() if k != "expression"):
        raise _Unsupported
    if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit():
        return int(value.this)
    raise _Unsupported
