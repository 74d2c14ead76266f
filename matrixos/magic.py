"""``%sql`` and ``%%sql``: run SQL against a lakehouse from IPython and Jupyter.

``%load_ext matrixos`` registers them. The lakehouse is the notebook's ``lh`` variable when it
is a ``matrixos.Lakehouse``, otherwise one ``mx.connect()`` made on first use.

Example (in a notebook)::

    %load_ext matrixos
    %%sql --dialect postgres --out top
    SELECT city, sum(amount) AS total FROM sales.orders GROUP BY city ORDER BY total DESC
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from matrixos.engine.result import Result
    from matrixos.session import Lakehouse

# The options a line magic may start with; whatever follows is SQL, passed on verbatim (quotes
# and all), which parsing the whole line with shlex would not do.
_LEADING_OPTIONS = re.compile(r"^\s*((?:(?:--dialect|--out|-d|-o)(?:\s+|=)[^\s=]+\s*)*)(.*)$", re.S)

_default: Lakehouse | None = None


@magics_class
class SQLMagics(Magics):
    """The ``%sql`` line magic and ``%%sql`` cell magic."""

    @no_var_expand  # SQL is taken as written: `$1` and `{…}` are not Python substitutions
    @magic_arguments()
    @argument("-d", "--dialect", default=None, help="sqlglot dialect of the SQL (default duckdb).")
    @argument("-o", "--out", default=None, help="Also store the Result in this variable.")
    @argument("sql", nargs="*", help="The SQL (line magic); a cell magic takes the cell body.")
    @line_cell_magic
    def sql(self, line: str, cell: str | None = None) -> Result | None:
        """Run SQL on the notebook's lakehouse and return the ``Result``."""
        if cell is None:
            m = _LEADING_OPTIONS.match(line)
            assert m is not None  # the pattern matches any string
            opts, query = m.group(1), m.group(2)
        else:
            opts, query = line, cell
        args = parse_argstring(self.sql, opts)
        if cell is not None and args.sql:
            query = " ".join(args.sql) + "\n" + query
        if not query.strip():
            raise UsageError("%sql needs a statement, e.g. %sql SELECT 1")
        if args.out is not None and not args.out.isidentifier():
            raise UsageError(f"--out needs a variable name, not {args.out!r}")
        from matrixos.errors import MatrixOSError

        try:
            result = _lakehouse(self.shell).sql(query, dialect=args.dialect)
        except MatrixOSError as e:
            # A user error (bad SQL, a missing table): the message says it all; the engine
            # frames and the chained sqlglot/DuckDB exception would bury it.
            raise e.with_traceback(None) from None
        if args.out:
            # Materialize once so the stored Result and the displayed one are the same rows.
            result.to_arrow()
            self.shell.user_ns[args.out] = result  # type: ignore[union-attr]
        return result


def _lakehouse(shell: InteractiveShell | Any) -> Lakehouse:
    from matrixos.session import Lakehouse, connect

    global _default
    lh = shell.user_ns.get("lh") if shell is not None else None
    if isinstance(lh, Lakehouse):
        return lh
    if _default is None:
        _default = connect()
    return _default


def register(ipython: Any) -> None:
    """Register ``%sql`` / ``%%sql`` on an IPython shell (what ``%load_ext matrixos`` does)."""
    ipython.register_magics(SQLMagics)
