"""Plans of repeated queries: a statement's DuckDB SQL kept per text, principal and table
versions, so running it again costs a few checks instead of parsing, rewriting and binding.

A dashboard, a notebook cell run again and a benchmark send the same text many times; its plan
(the DuckDB SQL with each table replaced by its pruned file list) depends only on

- the text, its dialect and the engine asked (``auto``/``local``),
- the principal (its grants decide what it may read; policies wrap what it reads),
- the catalog (entries, grants, policies: one change counter, ``TableService.cache``),
- the version of each table read at its latest version (time travel names its own),

and on nothing else when the query folded no constant through DuckDB (``now()``,
``current_date``: decided when it runs), reads no search function, no real-time view and no
Arrow source (deletion vectors) but a table's rows still in a write-ahead log (an IoT table
under continuous ingest always has some: its plan records where it scans them,
``PendingSlot``) and the datasets of a Delta table's files on an object store (immutable: the
plan keeps them, ``Plan.sources``). Only such plans are kept (a search statement sent again with
another vector has its own cache: ``engine.sql.search_plans``). Using one checks the counter
(one read), each table's latest version (a stat on a local disk, one LIST of the Delta log
from that version on S3: ``DeltaStore.is_latest``) and its pending rows (none
then and now, or rows of the same shape, registered under the plan's name); any difference
plans again.

A plan is also kept for the statement with its literals lifted out (``lift``: a service
sending ``… WHERE id = <key>`` with a new key each time): the literals compared with a column
(``compared_literals``) are marked in the DuckDB SQL (``mark``, ``parameterize``) and take the
new text's values; every other literal must be as it was (``Params.fixed``). Pruning follows
them (``binding.Trace``, ``binding.Reprune``): a reuse prunes the table's files again with the
new values and runs the plan kept for exactly those files.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> _ = lh.create_table("s.t", [{"id": 1}])
    >>> q = "SELECT count(*) FROM s.t"
    >>> lh.sql(q).scalar(), lh.sql(q).scalar()  # the second from the plan cache
    (1, 1)
    >>> lh.sql(q).stats["plan"]
    'cached'
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Hashable
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from matrixos._lru import LRU
from matrixos.catalog import TableInfo
from matrixos.engine import vector_literals

# Plans kept per engine; statements longer than this are not kept (their text is the key).
MAX_PLANS = 1024  # a statement over a table of many files keeps a plan per file set
MAX_TEXT = 64 * 1024


@dataclass(frozen=True)
class PendingSlot:
    """Where a plan reads a table's rows still in a write-ahead log: the Arrow source name its
    SQL scans, and the shape those rows had (``PendingRows.shape``). A later run registers the
    rows pending then under that name, when they have the same shape."""

    name: str
    shape: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class TableRead:
    """One table a plan reads: its catalog entry and the version read; ``latest``: read at
    its latest version (checked again before the plan is used); ``pending``: its rows still
    in a write-ahead log, when the plan read any."""

    info: TableInfo
    version: int
    latest: bool
    pending: PendingSlot | None = None

    @property
    def location(self) -> str:
        return self.info.location


@dataclass(frozen=True)
class Plan:
    """A query's DuckDB SQL and what it depends on; ``sources``: the Arrow sources its SQL
    scans by name that stay valid while its tables stay at their versions (the pyarrow
    datasets of a Delta table's files on an object store), registered again at each run."""

    sql: str
    counter: int
    reads: tuple[TableRead, ...]
    locations: tuple[str, ...]  # what the cursor's allowed directories must cover
    notes: tuple[str, ...] = ()
    sources: tuple[tuple[str, Any], ...] = ()
    params: Params | None = None  # kept for the statement's literals lifted out


class PlanCache:
    """Plans by key (text, dialect, engine, principal); thread-safe. ``volatile()`` marks the
    statement planning on this thread as one whose plan must not be kept."""

    def __init__(self, maxsize: int = MAX_PLANS) -> None:
        self._plans: LRU[Hashable, Plan] = LRU(maxsize)
        self._local = threading.local()

    def get(self, key: Hashable) -> Plan | None:
        return self._plans.get(key)

    def put(self, key: Hashable, plan: Plan) -> None:
        self._plans.put(key, plan)

    def drop(self, key: Hashable) -> None:
        self._plans.pop(key)

    def clear(self) -> None:
        self._plans.clear()

    # -- what planning on this thread did ---------------------------------------------------
    def begin(self) -> None:
        """A statement starts planning on this thread."""
        self._local.volatile = False

    def volatile(self) -> None:
        """The statement planning on this thread evaluated something at plan time whose value
        may change (a constant folded by DuckDB, a time-travel offset from now)."""
        self._local.volatile = True

    def is_volatile(self) -> bool:
        return bool(getattr(self._local, "volatile", True))


# -- plans kept for a statement's literals lifted out ---------------------------------------
# Dialects whose strings are '…' with '' as the only escape and whose "…" quote identifiers:
# there a literal's text as written is DuckDB's text for it.
LIFT_DIALECTS = frozenset({"duckdb", "postgres", "trino", "presto", "redshift", "snowflake"})
# Texts with backslashes (an escape in some dialects' strings) or NULs (the template's own
# marker) are not lifted; nor, outside strings, comments, ``$`` (parameters, dollar quoting),
# ``#`` and backticks (``_TOKEN``'s last alternative).
_UNSAFE = re.compile(r"[\\\x00]")
_TOKEN = re.compile(
    r'"(?:[^"]|"")*"'  # a quoted identifier (skipped)
    r"|'(?:[^']|'')*'"  # a string
    r"|[A-Za-z_][A-Za-z_0-9]*"  # a word (skipped: t1 is no number)
    r"|(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"  # a number
    r"|--|/\*|[$#`]"  # not lifted
)
# Meta of a literal node lifted out (its index in ``Literals``): binding follows it into the
# predicates that prune files (``binding.Trace``).
LIFTED = "mx_lifted"
_MARK = re.compile(r" /\* mx_lit ([0-9a-f]{12}) ([0-9]+) \*/")
# Where a literal compared with the node's ``this`` sits in an IN list or BETWEEN.
_OPERANDS: dict[type[exp.Expr], tuple[str, ...]] = {
    exp.In: ("expressions",),
    exp.Between: ("low", "high"),
}
_COMPARISONS = (exp.EQ, exp.NEQ, exp.LT, exp.LTE, exp.GT, exp.GTE, exp.Like, exp.ILike)


@dataclass(frozen=True)
class Literals:
    """A statement's literals (numbers, strings) lifted out of its text: ``template`` is the
    text with each replaced by its kind (``s`` string, ``i`` integer, ``d`` decimal, ``e``
    with an exponent); ``spans`` their (first, last) offsets, as sqlglot's node meta has
    them; ``texts`` each as written.

    Example:
        >>> lits = lift("SELECT * FROM t WHERE id = 42 AND s = 'it''s'", "duckdb")
        >>> lits.texts, lits.template.replace("\\x00", "?")
        (('42', "'it''s'"), 'SELECT * FROM t WHERE id = ?i AND s = ?s')
    """

    template: str
    spans: tuple[tuple[int, int], ...]
    texts: tuple[str, ...]


def lift(sql: str, dialect: str) -> Literals | None:
    """``sql``'s literals lifted out (one regex pass); None when the dialect or the text is
    one this is not sure to read as sqlglot does (see ``LIFT_DIALECTS``, ``_UNSAFE``), or
    it has no literal."""
    if dialect.lower() not in LIFT_DIALECTS or _UNSAFE.search(sql):
        return None
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    texts: list[str] = []
    last = 0
    for m in _TOKEN.finditer(sql):
        tok = m.group()
        first = tok[0]
        if first == '"' or first == "_" or first.isalpha():
            continue
        if first in "-/$#`":
            return None
        start = m.start()
        if first == "'":
            if start and (sql[start - 1].isalnum() or sql[start - 1] in "_'"):
                return None  # E'…', X'…', N'…': a prefixed string
            kind = "s"
        else:
            kind = "e" if "e" in tok or "E" in tok else "d" if "." in tok else "i"
        pieces += (sql[last:start], "\x00", kind)
        spans.append((start, m.end() - 1))
        texts.append(tok)
        last = m.end()
    if not texts:
        return None
    if len(texts) >= vector_literals.MIN_NUMBERS and vector_literals.lift(sql)[1]:
        return None  # parsed with its query vectors lifted: its nodes' offsets are not ours
    pieces.append(sql[last:])
    return Literals("".join(pieces), tuple(spans), tuple(texts))


def compared_literals(tree: exp.Expr, lits: Literals) -> dict[int, tuple[exp.Literal, str]]:
    """The literals of ``lits`` (by index) that ``tree`` compares with a column, directly
    (``col = 5``, ``col IN (1, 2)``, ``col BETWEEN 1 AND 9``, ``col LIKE 'a%'``, ``col >=
    DATE '2024-01-01'``, ``col < -3``), each with its node and the column's name (lower
    case): the ones a kept plan may take another value for. Any other literal (LIMIT, time
    travel, INTERVAL, a function's argument, the select list) stays as written."""
    by_span = {span: i for i, span in enumerate(lits.spans)}
    out: dict[int, tuple[exp.Literal, str]] = {}
    for node in tree.find_all(exp.Literal):
        i = by_span.get((node.meta.get("start", -1), node.meta.get("end", -1)))
        if i is None or _written(node) != lits.texts[i]:
            continue
        column = _compared_column(node)
        if column is not None:
            out[i] = (node, column)
            node.meta[LIFTED] = i
    return out


def _written(node: exp.Literal) -> str:
    """A literal node as its token was written (strings quoted, ``''`` escaped)."""
    text = str(node.this)
    return "'" + text.replace("'", "''") + "'" if node.is_string else text


def _compared_column(node: exp.Literal) -> str | None:
    top: exp.Expr = node
    parent = node.parent
    if isinstance(parent, exp.Neg) and not node.is_string:
        top, parent = parent, parent.parent
    elif (
        isinstance(parent, exp.Cast)
        and node.is_string
        and node.arg_key == "this"
        and parent.to.is_type(exp.DataType.Type.DATE, exp.DataType.Type.TIMESTAMP)
    ):
        top, parent = parent, parent.parent  # DATE '…', TIMESTAMP '…'
    while isinstance(parent, exp.Paren):
        top, parent = parent, parent.parent
    other: exp.Expr | None = None
    if isinstance(parent, _COMPARISONS):
        other = parent.expression if top.arg_key == "this" else parent.this
    elif parent is not None and top.arg_key in _OPERANDS.get(type(parent), ()):
        other = parent.this
    if isinstance(other, exp.Column) and isinstance(other.this, exp.Identifier):
        return other.name.lower()
    return None


@dataclass(frozen=True)
class Params:
    """How a kept plan's DuckDB SQL takes a statement's literals: ``parts`` around the lifted
    ones (``slots[i]`` goes between ``parts[i]`` and ``parts[i + 1]``), and the literals that
    must be as they were (``fixed``: by index, as written).

    Example:
        >>> lits = lift("SELECT * FROM t WHERE id = 1 LIMIT 5", "duckdb")
        >>> params = Params(("SELECT * FROM f WHERE id = ", " LIMIT 5"), (0,), ((1, "5"),))
        >>> params.sql(lift("SELECT * FROM t WHERE id = 42 LIMIT 5", "duckdb"))
        'SELECT * FROM f WHERE id = 42 LIMIT 5'
        >>> params.sql(lift("SELECT * FROM t WHERE id = 42 LIMIT 6", "duckdb")) is None
        True
    """

    parts: tuple[str, ...]
    slots: tuple[int, ...]
    fixed: tuple[tuple[int, str], ...]
    # Table references pruned by lifted literals (``binding.Reprune``), and the files each
    # read: another value that prunes to other files has a plan of its own.
    prunes: tuple[Any, ...] = ()
    files: tuple[tuple[str, ...], ...] = ()

    def sql(self, lits: Literals) -> str | None:
        """The plan's SQL for these literals; None when a fixed one differs."""
        texts = lits.texts
        if any(texts[i] != text for i, text in self.fixed):
            return None
        out = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            out += (texts[slot], part)
        return "".join(out)


def parameterize(
    sql: str, tag: str, lits: Literals, lifted: Collection[int]
) -> tuple[str, Params | None]:
    """``sql`` without the comments that mark the lifted literals (``mark``), and how it
    takes other values of them: ``Params``, checked to give that same SQL back for the
    literals as written; None when a marked literal is missing, doubled or not as written
    (then only the text's own plan is kept)."""
    parts: list[str] = []
    slots: list[int] = []
    last, ok = 0, True
    for m in _MARK.finditer(sql):
        if m[1] != tag:
            continue
        i = int(m[2])
        text = lits.texts[i] if i < len(lits.texts) else ""
        start = m.start() - len(text)
        if not text or i not in lifted or i in slots or sql[start : m.start()] != text:
            ok = False
        parts.append(sql[last:start])
        slots.append(i)
        last = m.end()
    parts.append(sql[last:])
    plain = unmarked(sql, tag)
    if not ok or set(slots) != set(lifted):
        return plain, None
    fixed = tuple((i, t) for i, t in enumerate(lits.texts) if i not in lifted)
    params = Params(tuple(parts), tuple(slots), fixed)
    return plain, params if params.sql(lits) == plain else None


def unmarked(sql: str, tag: str) -> str:
    """``sql`` without the comments ``mark`` left for ``tag``."""
    return _MARK.sub(lambda m: "" if m[1] == tag else m[0], sql)


def mark(node: exp.Expr, tag: str, i: int) -> None:
    """Mark ``node``, lifted literal ``i``, for ``parameterize``: a comment right after it in
    the SQL made from the tree (DuckDB ignores it)."""
    node.add_comments([f"mx_lit {tag} {i}"])
