"""Query layer: sqlglot front end, sandbox, scan planning over Delta files, DuckDB execution."""
