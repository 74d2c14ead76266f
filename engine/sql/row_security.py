"""Row filters and column masks applied to a query: the one place they are enforced.

Before a query is bound, each reference to a table with policies for the principal (see
``matrixos.catalog.policies`` for which apply) is replaced by

    (SELECT * REPLACE (CAST(<mask> AS <type>) AS col, …) FROM t AS _mx_src
     WHERE (<filter 1>) AND (<filter 2>)) AS <the reference's alias>

so the rule holds wherever the reference stands: joins, subqueries, CTEs, the source of CTAS,
INSERT … SELECT and MERGE, EXPLAIN, time travel (``VERSION AS OF`` reads the old rows through
today's policies), ``map_batches`` sources, and the SDK's reads and searches (they run as SQL
when a policy applies). A condition the query puts on a masked column sees the masked value:
nothing about the real one can be inferred from which rows come back. The results of the search
functions are filtered and masked the same way (``functions.expand_functions`` marks them), and
their row filters also run inside the search, before top-k.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp

from matrixos.catalog import TableIdent
from matrixos.catalog.policies import TablePolicy
from matrixos.engine.context import table_refs
from matrixos.engine.functions import POLICY, is_function_result
from matrixos.engine.sql.binding import SECURED, SECURED_SOURCE
from matrixos.engine.sql.local import TABLE_CARRIED

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.catalog.service import TableService

SOURCE = "_mx_src"  # the table's alias inside its policy subquery


class RowSecurity:
    """Finds the policies that apply to a query's tables and wraps those references."""

    def __init__(self, service: TableService) -> None:
        self.service = service

    def policies(self, principal: Principal, names: list[str]) -> dict[str, TablePolicy]:
        """What applies to ``principal`` on each of the tables ``names`` (full names)."""
        cache = self.service.cache

        def owner(name: str) -> str | None:
            return cache.get_table(TableIdent.parse(name)).owner

        return self.service.policies.applying(principal, names, owner)

    def apply(self, tree: exp.Expr, principal: Principal, explain: list[str]) -> None:
        """Wrap, in ``tree``, every table reference and search result a policy applies to;
        ``explain`` gets one line per table wrapped (its filters' count and masked columns,
        not their text)."""
        refs = table_refs(tree)
        idents = [TableIdent.from_parts(r.catalog or None, r.db or None, r.name) for r in refs]
        found = self.policies(principal, sorted({str(i) for i in idents})) if refs else {}
        wrapped: set[str] = set()
        for node, ident in zip(refs, idents, strict=True):
            policy = found.get(str(ident))
            if policy is not None:
                wrap(node, policy)
                wrapped.add(policy.table)
        for node in list(tree.find_all(exp.Table)):
            policy = node.meta.get(POLICY)
            if policy is not None and is_function_result(node):
                wrap(node, policy)
                wrapped.add(policy.table)
        for name in sorted(wrapped):
            p = next(p for p in [*found.values(), *_search_policies(tree)] if p.table == name)
            masked = ", ".join(c for c, _, _ in p.masks) or "none"
            explain.append(
                f"Policies on {name} for {principal.name}: {len(p.filters)} row filter(s), "
                f"masked columns: {masked}"
            )


def _search_policies(tree: exp.Expr) -> list[TablePolicy]:
    return [p for n in tree.find_all(exp.Table) if isinstance(p := n.meta.get(POLICY), TablePolicy)]


def policy_condition(policy: TablePolicy, qualifier: str | None = None) -> exp.Expr | None:
    """The policy's filters ANDed (their columns qualified by ``qualifier``), or None."""
    if not policy.filters:
        return None
    terms = [exp.paren(_qualified(f, qualifier)) for f in policy.filters]
    return exp.and_(*terms) if len(terms) > 1 else terms[0]


def wrap(node: exp.Table, policy: TablePolicy) -> exp.Subquery:
    """Replace the reference ``node`` by the policy's subquery over it (see the module)."""
    alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
    carried = {k: node.args[k] for k in TABLE_CARRIED if node.args.get(k)}
    placeholder = exp.Table(this=exp.to_identifier("_mx_placeholder"))
    hidden = {c.lower() for c in policy.hidden}
    replace = [
        exp.alias_(_masked(expression, cast_to), column, quoted=True)
        for column, expression, cast_to in policy.masks
        if column.lower() not in hidden
    ]
    star = exp.Star(
        except_=[exp.column(c, quoted=True) for c in policy.hidden] or None,
        replace=replace or None,
    )
    select = exp.Select(expressions=[star]).from_(placeholder, copy=False)
    condition = policy_condition(policy, SOURCE)
    if condition is not None:
        select = select.where(condition, copy=False)
    if policy.limit is not None:  # a search ranked without its filters: its best k after them
        best = exp.Ordered(this=exp.column("_score", SOURCE, quoted=True), desc=True)
        select = select.order_by(best, copy=False).limit(policy.limit, copy=False)
    subquery = exp.Subquery(this=select, alias=alias, **carried)
    node.replace(subquery)
    for key in carried:
        node.set(key, None)
    node.set("alias", exp.TableAlias(this=exp.to_identifier(SOURCE, quoted=True)))
    placeholder.replace(node)
    node.meta[SECURED] = policy.masked
    subquery.meta[SECURED_SOURCE] = True
    return subquery


def _masked(expression: str, cast_to: str | None) -> exp.Expr:
    tree = _qualified(expression, SOURCE)
    if cast_to is None:
        return tree
    return exp.Cast(this=tree, to=exp.DataType.build(cast_to, dialect="duckdb"))


def _qualified(sql: str, qualifier: str | None) -> exp.Expr:
    """A stored expression (checked DuckDB SQL) with its columns qualified: inside a
    correlated subquery an unqualified name the table lacks could bind to an outer column."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    if qualifier is not None:
        for col in tree.find_all(exp.Column):
            col.set("table", exp.to_identifier(qualifier, quoted=True))
    return tree
