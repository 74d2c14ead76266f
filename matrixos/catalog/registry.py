"""Catalog backends by URL scheme, and where a warehouse's catalog lives by default.

=====================  =======================================================================
``sqlite:///path``     ``SQLCatalog``: a SQLite file (one machine)
``postgresql://…``     ``SQLCatalog``: a PostgreSQL database
``s3://bucket/path``   ``ObjectStoreCatalog``: a commit log in the bucket (every machine)
``file:///path``       ``ObjectStoreCatalog`` in a local folder
``memory://path``      ``ObjectStoreCatalog`` in this process's memory
=====================  =======================================================================

A local warehouse keeps SQLite in ``<warehouse>/_catalog.db``; an object-store warehouse keeps
its catalog in ``<warehouse>/_catalog/``, so storage and catalog travel together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from matrixos.catalog.base import Catalog
from matrixos.errors import ConfigError
from matrixos.storage.options import StorageOptions

if TYPE_CHECKING:
    from matrixos.storage.warehouse import Warehouse

Opener = Callable[[str, StorageOptions], Catalog]


def _sql(url: str, _options: StorageOptions) -> Catalog:
    from matrixos.catalog.store import SQLCatalog

    return SQLCatalog(url)


def _object_store(url: str, options: StorageOptions) -> Catalog:
    from matrixos.catalog._objects import objects_at
    from matrixos.catalog.objectstore import ObjectStoreCatalog

    return ObjectStoreCatalog(objects_at(url, options))


_BACKENDS: dict[str, Opener] = {
    "sqlite": _sql,
    "postgresql": _sql,
    "postgres": _sql,
    "s3": _object_store,
    "s3a": _object_store,
    "file": _object_store,
    "memory": _object_store,
}


def register_backend(scheme: str, opener: Opener) -> None:
    """Open catalog URLs of ``scheme`` (the part before ``:`` or ``+``) with ``opener``."""
    _BACKENDS[scheme.lower()] = opener


def open_catalog(url: str, storage_options: StorageOptions | None = None) -> Catalog:
    """The catalog at ``url``; ``storage_options`` reach an object store.

    Raises:
        ConfigError: no backend takes the URL's scheme.

    Example:
        >>> open_catalog("sqlite://").list_schemas()
        [('main', 'default')]
    """
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower() if ":" in url else ""
    opener = _BACKENDS.get(scheme)
    if opener is None:
        raise ConfigError(
            f"unsupported catalog URL {url!r}",
            hint="use sqlite:///path, postgresql://user@host/db, or s3://bucket/prefix/_catalog "
            f"(schemes: {', '.join(sorted(_BACKENDS))})",
        )
    return opener(url, storage_options or StorageOptions())


def default_catalog_url(warehouse: Warehouse) -> str:
    """SQLite inside a local warehouse; ``<warehouse>/_catalog`` in an object store."""
    if warehouse.is_remote:
        return warehouse.join("_catalog")
    return f"sqlite:///{warehouse.join('_catalog.db')}"


def catalog_for(warehouse: Warehouse, catalog_url: str | None, home: str) -> Catalog:
    """The catalog of a session: ``catalog_url``, or the warehouse's own.

    An object-store warehouse used before its catalog moved into the bucket has a catalog
    under ``home``: its entries are imported once (see ``matrixos.catalog._legacy``).
    """
    if catalog_url is not None:
        return open_catalog(catalog_url, warehouse.options)
    catalog = open_catalog(default_catalog_url(warehouse), warehouse.options)
    if warehouse.is_remote:
        from matrixos.catalog._legacy import import_local_catalog

        import_local_catalog(catalog, warehouse, home)
    return catalog
