"""The test suite's real services: the product's own (matrixos/cluster/services.py), which
``matrixos cluster up`` also starts. Kept as a module so tests import them from one place."""

from matrixos.cluster.services import (
    LOCALHOST,
    PostgresServer,
    PostgresUnavailable,
    S3Server,
    WarehouseTarget,
    find_postgres_bin,
    free_port,
    unique_name,
)

__all__ = [
    "LOCALHOST",
    "PostgresServer",
    "PostgresUnavailable",
    "S3Server",
    "WarehouseTarget",
    "find_postgres_bin",
    "free_port",
    "unique_name",
]
