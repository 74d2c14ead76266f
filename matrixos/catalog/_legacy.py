"""One-time import of the machine-local catalog that object-store warehouses used to have.

Before the catalog moved into the bucket, an ``s3://`` warehouse without ``catalog_url`` kept a
SQLite file at ``$MATRIXOS_HOME/catalogs/<sha256(warehouse URI)[:16]>.db``: other machines did
not see its tables. The first session that opens such a warehouse copies the entries whose
storage still exists into the warehouse's catalog (names already taken there are kept), then
renames the file to ``….db.imported`` so it is read only once. Entries whose files are gone
(the stale entries a re-created bucket left) are not imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

from matrixos.catalog.base import Catalog
from matrixos.catalog.objectstore import ObjectStoreCatalog
from matrixos.storage.warehouse import Warehouse, filesystem_for

log = logging.getLogger(__name__)


def local_catalog_path(warehouse: Warehouse, home: str) -> Path:
    """Where older versions kept the catalog of the object-store ``warehouse``."""
    digest = hashlib.sha256(warehouse.uri.encode()).hexdigest()[:16]
    return Path(home).expanduser() / "catalogs" / f"{digest}.db"


def import_local_catalog(catalog: Catalog, warehouse: Warehouse, home: str) -> int:
    """Move the local catalog of ``warehouse`` (if any) into ``catalog``; returns the number of
    tables and volumes added."""
    path = local_catalog_path(warehouse, home)
    if not isinstance(catalog, ObjectStoreCatalog) or not path.is_file():
        return 0
    from matrixos.catalog.store import SQLCatalog

    old = SQLCatalog(f"sqlite:///{path}")
    try:
        schemas, tables, volumes = old.list_schemas(), old.list_tables(), old.list_volumes()
    finally:
        old.close()

    def present(location: str) -> bool:
        return bool(filesystem_for(location, warehouse.options).exists(location))

    # A volume is a prefix that may hold no files yet: it is kept even when nothing is there.
    live = [t for t in tables if present(t.location)]
    added = catalog.import_entries(schemas, live, volumes)
    done = path.with_name(path.name + ".imported")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            Path(f"{path}{suffix}").rename(f"{done}{suffix}")
    gone = [t.name for t in tables if t not in live]
    log.warning(
        "the catalog of %s moved from %s into the warehouse (%s): %d table(s)/volume(s) "
        "imported%s; the old file is now %s",
        warehouse.uri,
        path,
        catalog.url,
        added,
        f", {len(gone)} skipped because their storage is gone ({', '.join(gone)})" if gone else "",
        done,
    )
    return added
