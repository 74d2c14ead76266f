"""Query vectors written in SQL, read without sqlglot.

``vector_search(t, [0.1, -0.2, …], k => 10)`` spells a query vector as hundreds of numbers;
sqlglot makes a node of each (a 384-d literal: tens of milliseconds to parse) and every later
walk of the tree visits them all again (sandbox check, function expansion). Before the parse,
``lift`` replaces each long list of numbers that stands as a function argument with a string
literal of a random placeholder; after it, ``restore`` hands the numbers to the search function
as a ready list (``VECTOR`` in the placeholder's ``meta``) and puts any other list back as the
array sqlglot would have made. A placeholder found anywhere but as exactly one string literal
(the list was inside a string or comment the scan did not recognise) means the text is parsed
as written.

Example:
    >>> import sqlglot
    >>> text, lifted = lift("SELECT * FROM vector_search(t, [" + "0.5, " * 15 + "1e-3], k => 2)")
    >>> text.startswith("SELECT * FROM vector_search(t, '__mx_vector_")
    True
    >>> tree = sqlglot.parse_one(text, read="duckdb")
    >>> restore([tree], lifted)
    True
    >>> tree.find(sqlglot.exp.Literal).meta[VECTOR][-2:]
    [0.5, 0.001]
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

import sqlglot
from sqlglot import exp

__all__ = ["MIN_NUMBERS", "VECTOR", "lift", "restore", "split"]

VECTOR = "mx_vector"  # meta key of a placeholder a search function reads: the list of floats
MIN_NUMBERS = 16  # shorter lists are parsed as written
# The search functions whose argument at this position is a query vector.
_VECTOR_ARGUMENT = {"vector_search": 1}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBERS = re.compile(rf"{_NUMBER}(?:\s*,\s*{_NUMBER})*")
# Strings, quoted identifiers and comments are skipped whole; a list is taken only where an
# argument starts (after "(" or ","). Its items are matched by their characters alone (a
# character class runs ~10x faster than the number pattern: ~15 µs for 384 numbers, which a
# repeated search pays on each call); ``numbers`` then tells a list of numbers from the rest.
_SCAN = re.compile(
    r"(?P<skip>'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\$\$.*?\$\$|--[^\n]*|/\*.*?\*/)"
    r"|(?P<before>[(,]\s*)\[\s*(?P<numbers>[-+.0-9][-+.0-9eE,\s]*)\]",
    re.S,
)


def _numbers(m: re.Match[str], *, strict: bool) -> str | None:
    """The list's numbers when ``m`` found a list of at least :data:`MIN_NUMBERS` (each one
    checked by the number pattern with ``strict``; else only counted), None otherwise."""
    numbers = m.group("numbers")
    if numbers is None or numbers.count(",") < MIN_NUMBERS - 1:
        return None
    numbers = numbers.rstrip()
    if strict and _NUMBERS.fullmatch(numbers) is None:
        return None
    return numbers


def lift(sql: str) -> tuple[str, dict[str, str]]:
    """``sql`` with each long list of numbers in an argument position replaced by a string
    literal of a placeholder, and the numbers' text of each placeholder."""
    lifted: dict[str, str] = {}
    if sql.count(",") < MIN_NUMBERS - 1:
        return sql, lifted
    token = uuid.uuid4().hex[:12]

    def replace(m: re.Match[str]) -> str:
        numbers = _numbers(m, strict=True)
        if numbers is None:  # a string, a comment, not a list of numbers: as written
            return m.group(0)
        key = f"__mx_vector_{token}_{len(lifted)}"
        lifted[key] = numbers
        return f"{m.group('before')}'{key}'"

    return _SCAN.sub(replace, sql), lifted


def split(sql: str) -> tuple[tuple[str, ...], list[str]]:
    """The text around each list ``lift`` would replace, and each list's numbers: two texts
    with the same pieces are the same statement with other vectors (a repeated search's key).
    The numbers are not checked one by one (their caller converts them, and a list that is
    not all numbers fails that; ``lift`` then leaves it for the parser to report).

    Example:
        >>> split("SELECT * FROM vector_search(t, [" + "1, " * 15 + "2], k => 3)")[0]
        ('SELECT * FROM vector_search(t, ', ', k => 3)')
    """
    if sql.count(",") < MIN_NUMBERS - 1:
        return (sql,), []
    pieces: list[str] = []
    numbers: list[str] = []
    start = 0
    for m in _SCAN.finditer(sql):
        found = _numbers(m, strict=False)
        if found is not None:
            pieces.append(sql[start : m.end("before")])
            numbers.append(found)
            start = m.end()
    pieces.append(sql[start:])
    return tuple(pieces), numbers


def restore(trees: Sequence[exp.Expr], lifted: dict[str, str]) -> bool:
    """Give each placeholder in ``trees`` its numbers back: as ``meta[VECTOR]`` where a search
    function reads a query vector, else as the array literal it was. False (trees untouched)
    when a placeholder is not exactly one string literal of them."""
    found: dict[str, exp.Literal] = {}
    for tree in trees:
        for lit in tree.find_all(exp.Literal):
            if lit.is_string and lit.this in lifted:
                if lit.this in found:
                    return False
                found[lit.this] = lit
    if found.keys() != lifted.keys():
        return False
    for key, lit in found.items():
        numbers = lifted[key]
        if _is_query_vector(lit):
            lit.meta[VECTOR] = [float(x) for x in numbers.split(",")]
        else:
            lit.replace(sqlglot.parse_one(f"[{numbers}]", read="duckdb"))
    return True


def _is_query_vector(lit: exp.Literal) -> bool:
    """Whether ``lit`` is the positional argument of a search function that holds its query
    vector (named arguments, ``k => 10``, do not count)."""
    fn = lit.parent
    if isinstance(fn, exp.Anonymous):
        name = str(fn.name).lower()
    elif isinstance(fn, exp.Func):
        name = fn.sql_name().lower()  # sqlglot knows VECTOR_SEARCH (BigQuery's)
    else:
        return False
    position = _VECTOR_ARGUMENT.get(name)
    if position is None:
        return False
    named = (exp.Kwarg, exp.PropertyEQ, exp.EQ)
    args = [a for a in fn.iter_expressions() if not isinstance(a, named)]
    return position < len(args) and args[position] is lit
