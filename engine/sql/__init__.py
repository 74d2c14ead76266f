"""The SQL engine: parse in any dialect, check, resolve names, run on DuckDB or the pool.

A map of the package:

- ``engine``: ``SQLEngine``, one session's SQL from text to a ``Result`` (it composes the rest);
- ``frontend``: parsing, dialects, never-allowed statements, checks of the translation;
- ``binding``: names resolved in the catalog, time travel, predicates for pruning, snapshots;
- ``local``: running a bound query (and its EXPLAIN) on the locked DuckDB connection;
- ``ddl`` and ``dml``: CREATE/DROP/SHOW/DESCRIBE and INSERT/UPDATE/DELETE/MERGE/OPTIMIZE/VACUUM;
- ``errors``: DuckDB's errors as MatrixOS errors about the user's statement.

Every statement is checked by ``engine.sandbox`` first. Tables are resolved, authorized and
written through the ``TableService`` (``matrixos.catalog.service``) for the statement's
``Principal``: the engine never holds the ``Lakehouse``.
"""

from __future__ import annotations

from matrixos.engine.sql.engine import SQLEngine as SQLEngine

__all__ = ["SQLEngine"]
