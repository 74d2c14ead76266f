"""TPC-H through MatrixOS vs plain DuckDB on the same Parquet data; see ``benchmarks/README.md``."""
