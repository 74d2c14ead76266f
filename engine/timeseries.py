"""Time-series SQL: TimescaleDB's functions, rewritten into plain DuckDB before a query runs.

Every dialect the engine reads gets them (the rewrite works on the parsed tree):

- ``time_bucket(interval, ts [, origin])`` — DuckDB's own; a text interval (``'5 minutes'``) is
  checked here so a bad one is an error naming its position.
- ``first(value, time)`` / ``last(value, time)`` — the value at the earliest / latest time of
  the group (DuckDB's ``arg_min`` / ``arg_max``).
- ``delta(v) OVER (…ORDER BY time)`` — ``v`` minus the previous row's ``v``.
- ``rate(v, time) OVER (…)`` — per-second increase of a counter: ``(v - prev) / seconds``, and
  where ``v < prev`` the counter was reset, so the increase is ``v`` (Prometheus' rule). The
  window is ordered by ``time`` unless it says otherwise.
- ``time_bucket_gapfill(interval, ts, start, finish)`` with ``locf(agg)`` and
  ``interpolate(agg)`` — a grouped query whose answer has a row for every bucket in
  ``[start, finish)`` of every group (gap rows hold NULL aggregates), ``locf`` carrying the last
  value forward and ``interpolate`` filling linearly between the neighbours in time. It is
  rewritten as: the query itself (bucketed with ``time_bucket``), the buckets
  (``unnest(range(…))``) crossed with the groups it found, a full join of the two, then
  window functions.

The rewrite builds trees: no user text is pasted into SQL.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlglot import exp

from matrixos.errors import MatrixOSError, NotSupported, SQLError

if TYPE_CHECKING:
    import pyarrow as pa

GAPFILL = "time_bucket_gapfill"
MAX_GAPFILL_BUCKETS = 1_000_000
FILLERS = ("locf", "interpolate")
WINDOWED = ("delta", "rate")
# The names this module gives a meaning to (EXPLAIN and the docs list them).
TIME_SERIES_FUNCTIONS = frozenset({"time_bucket", GAPFILL, "first", "last", *FILLERS, *WINDOWED})


class ConstantHost(Protocol):
    """What the rewrite needs of the engine: a constant expression's value."""

    def constant(self, node: exp.Expr) -> Any: ...


def _name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    if isinstance(node, exp.DateBin):
        return "time_bucket"
    return ""


def misuse(node: exp.Expr, message: str, hint: str | None = None) -> SQLError:
    """An error at ``node``'s position in the statement (when the parser recorded one)."""
    line = col = None
    for n in node.walk():
        meta = n.meta if isinstance(n, exp.Expr) else {}
        if "line" in meta and "col" in meta:
            line = int(meta["line"])
            col = int(meta["col"])
            if "start" in meta and "end" in meta:
                col -= int(meta["end"]) - int(meta["start"])
            break
    return SQLError(message, sql=node.sql(), line=line, col=col, hint=hint)


def rewrite(tree: exp.Expr, host: ConstantHost) -> exp.Expr:
    """``tree`` with its time-series functions rewritten (in place, but a gap-filled query at
    the root is a new tree: use the return value)."""
    filling = False  # gap filling needs two more walks of the tree; most queries have none
    for node in list(tree.find_all(exp.Anonymous, exp.DateBin, exp.First, exp.Last)):
        if isinstance(node, exp.First | exp.Last):
            if node.args.get("expression") is not None:  # first(v, time), not first(v)
                cls = exp.ArgMin if isinstance(node, exp.First) else exp.ArgMax
                node.replace(cls(this=node.this, expression=node.args["expression"]))
            continue
        name = _name(node)
        if name == "time_bucket":
            _check_interval(node, host)
        elif name in WINDOWED:
            _windowed(node, name)
        elif name == GAPFILL or name in FILLERS:
            filling = True
    if not filling:
        return tree
    for select in reversed(list(tree.find_all(exp.Select))):
        calls = [c for item in select.expressions for c in item.find_all(exp.Anonymous)]
        if any(_name(c) == GAPFILL for c in calls):
            filled = _gapfill(select, host)
            if select is tree:
                tree = filled
            else:
                select.replace(filled)
    for node in tree.find_all(exp.Anonymous):
        name = _name(node)
        if name in FILLERS:
            raise misuse(
                node,
                f"{name}() fills the gaps of a time_bucket_gapfill() query",
                hint=f"SELECT time_bucket_gapfill('1 minute', time, start, finish) AS bucket, "
                f"{name}(avg(v)) FROM t GROUP BY bucket",
            )
        if name == GAPFILL:
            raise misuse(
                node,
                "time_bucket_gapfill() must be an item of a grouped query's SELECT list",
                hint="SELECT time_bucket_gapfill(…) AS bucket, … GROUP BY bucket",
            )
    return tree


def _check_interval(node: exp.Expr, host: ConstantHost) -> None:
    args = [node.this, node.args.get("expression")] if isinstance(node, exp.DateBin) else None
    if args is None:
        args = list(node.expressions)
    if len(args) < 2 or any(a is None for a in args[:2]) or len(args) > 3:
        raise misuse(node, "time_bucket(interval, time [, origin]) takes 2 or 3 arguments")
    width = args[0]
    if isinstance(width, exp.Literal) and width.is_string:
        _interval_value(width, host, "time_bucket")


# Widths already checked (a dashboard sends the same few on every query): no DuckDB round trip.
_CHECKED: dict[str, Any] = {}


def _interval_value(width: exp.Expr, host: ConstantHost, fn: str) -> Any:
    text = width.name if isinstance(width, exp.Literal) else None
    if text is not None and text in _CHECKED:
        return _CHECKED[text]
    value = _checked_interval(width, host, fn)
    if text is not None and len(_CHECKED) < 1024:
        _CHECKED[text] = value
    return value


def _checked_interval(width: exp.Expr, host: ConstantHost, fn: str) -> Any:
    try:
        value = host.constant(exp.cast(width.copy(), exp.DataType.build("INTERVAL")))
    except MatrixOSError as e:
        raise misuse(
            width,
            f"{fn}()'s width {width.sql()} is not an interval",
            hint="e.g. '5 minutes', '1 hour', INTERVAL '1 day'",
        ) from e
    if value is None or (hasattr(value, "total_seconds") and value.total_seconds() <= 0):
        raise misuse(width, f"{fn}()'s width must be a positive interval, got {width.sql()}")
    return value


def _windowed(node: exp.Func, name: str) -> None:
    window = node.parent
    usage = (
        "delta(v) OVER (PARTITION BY … ORDER BY time)"
        if name == "delta"
        else ("rate(v, time) OVER (PARTITION BY …)")
    )
    if not isinstance(window, exp.Window) or window.this is not node:
        raise misuse(node, f"{name}() is a window function: write {usage}")
    args = list(node.expressions)
    want = 1 if name == "delta" else 2
    if len(args) != want:
        raise misuse(node, f"{name}() takes {want} argument{'s' if want > 1 else ''}: {usage}")
    spec = window.copy()
    spec.set("this", None)
    # ``OVER w`` names a WINDOW clause's window: its ORDER BY is DuckDB's to apply.
    if not spec.args.get("order") and not spec.args.get("alias"):
        if name == "delta":
            raise misuse(node, "delta() needs an ordered window", hint=usage)
        spec.set("order", exp.Order(expressions=[exp.Ordered(this=args[1].copy())]))

    def over(fn: exp.Expr) -> exp.Window:
        w = spec.copy()
        w.set("this", fn)
        return w

    value = args[0]
    prev = over(exp.Anonymous(this="lag", expressions=[value.copy()]))
    if name == "delta":
        window.replace(exp.paren(exp.Sub(this=value.copy(), expression=prev)))
        return
    time = args[1]
    prev_time = over(exp.Anonymous(this="lag", expressions=[time.copy()]))
    increase = exp.Case(
        ifs=[
            exp.If(
                this=exp.GTE(this=value.copy(), expression=prev.copy()),
                true=exp.Sub(this=value.copy(), expression=prev.copy()),
            )
        ],
        default=value.copy(),  # the counter was reset: it counted v since
    )
    seconds = exp.Anonymous(
        this="epoch", expressions=[exp.paren(exp.Sub(this=time.copy(), expression=prev_time))]
    )
    nullif = exp.Nullif(this=seconds, expression=exp.Literal.number(0))
    window.replace(exp.paren(exp.Div(this=increase, expression=nullif, typed=False, safe=False)))


# -- time_bucket_gapfill ------------------------------------------------------------------------
def _gapfill(select: exp.Select, host: ConstantHost) -> exp.Expr:
    """The gap-filled form of a grouped ``select`` with ``time_bucket_gapfill`` in its list."""
    if not select.args.get("group"):
        raise misuse(select.expressions[0], "a time_bucket_gapfill() query needs GROUP BY")
    token = f"__mx_gf_{uuid.uuid4().hex[:8]}_"
    inner = select.copy()
    order = inner.args.pop("order", None)
    limit = inner.args.pop("limit", None)
    offset = inner.args.pop("offset", None)
    bucket_idx: int | None = None
    bucket_call: exp.Anonymous | None = None
    keys: list[int] = []
    fillers: dict[int, str] = {}
    names: list[str] = []
    for i, item in enumerate(inner.expressions):
        body = item.this if isinstance(item, exp.Alias) else item
        calls = [c for c in item.find_all(exp.Anonymous) if _name(c) == GAPFILL]
        if calls:
            if bucket_idx is not None or calls[0] is not body:
                raise misuse(
                    calls[0],
                    "time_bucket_gapfill() must appear once, as a whole item of the SELECT list",
                )
            bucket_idx, bucket_call = i, calls[0]
            names.append(item.alias if isinstance(item, exp.Alias) else GAPFILL)
        elif isinstance(body, exp.Anonymous) and _name(body) in FILLERS:
            if len(body.expressions) != 1:
                raise misuse(body, f"{_name(body)}() takes one argument (an aggregate)")
            fillers[i] = _name(body)
            names.append(item.alias if isinstance(item, exp.Alias) else _name(body))
            body.replace(body.expressions[0])
        else:
            if body.find(exp.AggFunc) is None and not body.find(exp.Window):
                keys.append(i)
            names.append(item.alias_or_name or item.sql(dialect="duckdb"))
    assert bucket_call is not None and bucket_idx is not None
    _group_by_position(inner, select, names)
    args = list(bucket_call.expressions)
    if len(args) == 2:  # TimescaleDB's form: the range from the WHERE clause
        args += _bounds_from_where(select, args[1])
    if len(args) != 4 or any(a is None for a in args):
        raise misuse(
            bucket_call,
            "time_bucket_gapfill(interval, time, start, finish) takes 4 arguments, or 2 when "
            "WHERE bounds the time column on both sides",
            hint="start and finish bound the buckets filled (finish excluded)",
        )
    width, ts, start, finish = args
    if isinstance(width, exp.Literal) and width.is_string:
        _interval_value(width, host, GAPFILL)
        width = exp.cast(width, exp.DataType.build("INTERVAL"))
    start, finish = (_timestamp(a) for a in (start, finish))
    _check_bucket_count(bucket_call, width, start, finish, host)
    bucket_call.replace(exp.Anonymous(this="time_bucket", expressions=[width.copy(), ts]))
    for i, item in enumerate(inner.expressions):
        body = item.this if isinstance(item, exp.Alias) else item
        item.replace(exp.alias_(body, f"{token}{i}", quoted=True))

    agg = f"{token}agg"
    b = f"{token}{bucket_idx}"

    def col(name: str, table: str | None = None) -> exp.Column:
        return exp.column(name, table=table, quoted=True)

    grid = exp.select(
        exp.alias_(
            exp.Unnest(
                expressions=[
                    exp.Anonymous(
                        this="range",
                        expressions=[
                            exp.Anonymous(this="time_bucket", expressions=[width.copy(), start]),
                            finish,
                            width.copy(),
                        ],
                    )
                ]
            ),
            b,
            quoted=True,
        )
    )
    if keys:
        groups = exp.select(*[col(f"{token}{k}") for k in keys]).distinct().from_(agg)
        grid = (
            exp.select(exp.Star())
            .from_(grid.subquery(f"{token}b"))
            .join(groups.subquery(f"{token}g"), join_type="CROSS")
        )
    on = exp.and_(
        *[
            exp.NullSafeEQ(
                this=col(f"{token}{k}", f"{token}grid"), expression=col(f"{token}{k}", agg)
            )
            for k in [bucket_idx, *keys]
        ]
    )
    filled_items: list[exp.Expr] = []
    for i in range(len(names)):
        c = f"{token}{i}"
        if i == bucket_idx or i in keys:
            filled_items.append(
                exp.alias_(
                    exp.Coalesce(this=col(c, f"{token}grid"), expressions=[col(c, agg)]),
                    c,
                    quoted=True,
                )
            )
        else:
            filled_items.append(col(c, agg))
    filled = (
        exp.select(*filled_items)
        .from_(grid.subquery(f"{token}grid"))
        .join(exp.to_table(agg, quoted=True), on=on, join_type="FULL")
    )
    partition = [col(f"{token}{k}") for k in keys]
    outer_items: list[exp.Expr] = []
    for i, name in enumerate(names):
        cell = col(f"{token}{i}")
        value: exp.Expr = cell
        if fillers.get(i) == "locf":
            value = _locf(cell, partition, col(b))
        elif fillers.get(i) == "interpolate":
            value = _interp(cell, partition, col(b))
        outer_items.append(exp.alias_(value, name, quoted=True))
    outer = exp.select(*outer_items).from_(filled.subquery(f"{token}filled"))
    outer = outer.with_(agg, as_=inner)
    if order is not None:
        outer.set("order", _outer_order(order, select, names))
    else:
        ordinals = [*keys, bucket_idx]
        outer.set(
            "order",
            exp.Order(expressions=[exp.Ordered(this=exp.Literal.number(k + 1)) for k in ordinals]),
        )
    if limit is not None:
        outer.set("limit", limit)
    if offset is not None:
        outer.set("offset", offset)
    return outer


def _group_by_position(inner: exp.Select, select: exp.Select, names: list[str]) -> None:
    """GROUP BY items that name an output column (alias or whole item) as its position: the
    inner query's items are renamed."""
    items = [e.this if isinstance(e, exp.Alias) else e for e in select.expressions]
    aliases = [e.alias if isinstance(e, exp.Alias) else None for e in select.expressions]
    for g in list(inner.args["group"].expressions):
        pos = None
        if isinstance(g, exp.Column) and not g.table and g.name in aliases:
            pos = aliases.index(g.name)
        else:
            pos = next((i for i, it in enumerate(items) if it == g), None)
        if pos is not None:
            g.replace(exp.Literal.number(pos + 1))


def _check_bucket_count(
    call: exp.Expr, width: exp.Expr, start: exp.Expr, finish: exp.Expr, host: ConstantHost
) -> None:
    """Refuse a range of more than ``MAX_GAPFILL_BUCKETS`` buckets (a typo such as '1 second'
    over years would build billions of rows per group); checked when the bounds are constant."""
    if any(a.find(exp.Column, exp.Query) for a in (width, start, finish)):
        return
    seconds = exp.Anonymous(
        this="epoch", expressions=[exp.paren(exp.Sub(this=finish.copy(), expression=start.copy()))]
    )
    step = exp.Anonymous(this="epoch", expressions=[width.copy()])
    try:
        n = host.constant(exp.Div(this=seconds, expression=step, typed=False, safe=False))
    except MatrixOSError:
        return  # DuckDB names what is wrong with them when the query runs
    if isinstance(n, int | float) and n > MAX_GAPFILL_BUCKETS:
        raise misuse(
            call,
            f"time_bucket_gapfill() would fill {int(n):,} buckets per group "
            f"(at most {MAX_GAPFILL_BUCKETS:,})",
            hint="a wider interval or a shorter [start, finish)",
        )


def _bounds_from_where(select: exp.Select, ts: exp.Expr) -> list[exp.Expr | None]:
    """``[start, finish)`` from the WHERE clause's conjuncts on ``ts`` (``ts >= a``,
    ``ts < b``, ``ts BETWEEN a AND b``; an inclusive upper bound includes its bucket)."""
    where = select.args.get("where")
    if where is None:
        return [None, None]
    cond = where.this
    parts = list(cond.flatten()) if isinstance(cond, exp.And) else [cond]
    start: exp.Expr | None = None
    finish: exp.Expr | None = None
    micro = exp.Interval(this=exp.Literal.string("1"), unit=exp.var("MICROSECOND"))

    def after(e: exp.Expr) -> exp.Expr:  # an inclusive bound: its own bucket is filled
        return exp.Add(this=_timestamp(e.copy()), expression=micro.copy())

    for c in parts:
        if isinstance(c, exp.Between) and c.this == ts:
            start, finish = c.args["low"].copy(), after(c.args["high"])
        elif isinstance(c, exp.GTE | exp.GT) and c.this == ts:
            start = c.expression.copy()
        elif isinstance(c, exp.LT) and c.this == ts:
            finish = c.expression.copy()
        elif isinstance(c, exp.LTE) and c.this == ts:
            finish = after(c.expression)
        elif isinstance(c, exp.LTE | exp.LT) and c.expression == ts:
            start = c.this.copy()
        elif isinstance(c, exp.GT) and c.expression == ts:
            finish = c.this.copy()
        elif isinstance(c, exp.GTE) and c.expression == ts:
            finish = after(c.this)
    return [start, finish]


def _timestamp(arg: exp.Expr) -> exp.Expr:
    if isinstance(arg, exp.Literal) and arg.is_string:
        return exp.cast(arg, exp.DataType.build("TIMESTAMP"))
    return arg


def _ordered_window(
    fn: exp.Expr, partition: list[exp.Column], order: exp.Expr, following: bool
) -> exp.Window:
    spec = exp.WindowSpec(
        kind="ROWS",
        start="CURRENT ROW" if following else "UNBOUNDED",
        start_side=None if following else "PRECEDING",
        end="UNBOUNDED" if following else "CURRENT ROW",
        end_side="FOLLOWING" if following else None,
    )
    return exp.Window(
        this=fn,
        partition_by=[p.copy() for p in partition] or None,
        order=exp.Order(expressions=[exp.Ordered(this=order.copy())]),
        spec=spec,
        over="OVER",
    )


def _last_known(
    value: exp.Expr, partition: list[exp.Column], order: exp.Expr, following: bool = False
) -> exp.Window:
    fn = exp.FirstValue if following else exp.LastValue
    inner = exp.IgnoreNulls(this=fn(this=value.copy()))
    return _ordered_window(inner, partition, order, following)


def _locf(value: exp.Column, partition: list[exp.Column], order: exp.Column) -> exp.Expr:
    return _last_known(value, partition, order)


def _interp(value: exp.Column, partition: list[exp.Column], order: exp.Column) -> exp.Expr:
    """Linear interpolation in time between the nearest known values before and after."""
    when_known = exp.Case(
        ifs=[
            exp.If(
                this=exp.Not(this=exp.Is(this=value.copy(), expression=exp.null())),
                true=order.copy(),
            )
        ]
    )
    prev_v = _last_known(value, partition, order)
    prev_t = _last_known(when_known, partition, order)
    next_v = _last_known(value, partition, order, following=True)
    next_t = _last_known(when_known.copy(), partition, order, following=True)

    def seconds(a: exp.Expr, b: exp.Expr) -> exp.Expr:
        return exp.Anonymous(this="epoch", expressions=[exp.paren(exp.Sub(this=a, expression=b))])

    slope = exp.Div(
        this=exp.Mul(
            this=exp.paren(exp.Sub(this=next_v, expression=prev_v.copy())),
            expression=seconds(order.copy(), prev_t.copy()),
        ),
        expression=exp.Nullif(
            this=seconds(next_t, prev_t.copy()), expression=exp.Literal.number(0)
        ),
        typed=False,
        safe=False,
    )
    return exp.Coalesce(
        this=value.copy(), expressions=[exp.Add(this=prev_v.copy(), expression=slope)]
    )


def _outer_order(order: exp.Order, select: exp.Select, names: list[str]) -> exp.Order:
    """The user's ORDER BY in terms of the outer query's output (its positions)."""
    items = [e.this if isinstance(e, exp.Alias) else e for e in select.expressions]
    out = []
    for ordered in order.expressions:
        key = ordered.this
        pos: int | None = None
        if isinstance(key, exp.Literal) and key.is_int:
            pos = int(key.name) - 1
        elif isinstance(key, exp.Column) and not key.table and key.name in names:
            pos = names.index(key.name)
        else:
            pos = next((i for i, it in enumerate(items) if it == key), None)
        if pos is None or not 0 <= pos < len(names):
            raise misuse(
                key,
                "ORDER BY of a time_bucket_gapfill() query must name output columns",
                hint="order by an alias or position of the SELECT list",
            )
        new = ordered.copy()
        new.set("this", exp.Literal.number(pos + 1))
        out.append(new)
    return exp.Order(expressions=out)


# -- retention ---------------------------------------------------------------------------------
RETENTION = "matrixos.retention"
_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day|week)s?\s*$", re.I)


def parse_duration(text: str, what: str = RETENTION) -> timedelta:
    """``'30 days'``, ``'12 hours'``, ``'2 weeks'`` … as a ``timedelta`` (positive).

    Example:
        >>> parse_duration("30 days")
        datetime.timedelta(days=30)
    """
    m = _DURATION.match(text)
    if not m or int(m.group(1)) <= 0:
        raise SQLError(
            f"{what} = {text!r} is not a duration",
            hint="a positive whole number of seconds, minutes, hours, days or weeks: '30 days'",
        )
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2).lower()])


def day_partition(schema: pa.Schema, partition_by: list[str]) -> str:
    """The partition column retention deletes by: the first one holding a day (a DATE, or text
    named ``day`` or ``date`` holding ``YYYY-MM-DD``).

    Raises ``NotSupported`` when the table has none (retention deletes whole partitions only).
    """
    import pyarrow as pa

    for name in partition_by:
        field = schema.field(name) if name in schema.names else None
        if field is None:
            continue
        if pa.types.is_date(field.type):
            return name
        if pa.types.is_string(field.type) and name.lower() in ("day", "date"):
            return name
    raise NotSupported(
        f"{RETENTION} needs a table partitioned by day",
        hint="a DATE partition column (or text 'YYYY-MM-DD' named day): "
        "CREATE TABLE … PARTITIONED BY (day)",
    )
