"""The catalog: names, locations and properties of every table."""

from matrixos.catalog.base import Catalog as Catalog
from matrixos.catalog.base import TableInfo as TableInfo
from matrixos.catalog.base import VolumeInfo as VolumeInfo
from matrixos.catalog.names import DEFAULT_CATALOG as DEFAULT_CATALOG
from matrixos.catalog.names import DEFAULT_SCHEMA as DEFAULT_SCHEMA
from matrixos.catalog.names import TableIdent as TableIdent
from matrixos.catalog.names import parse_schema as parse_schema
from matrixos.catalog.registry import catalog_for as catalog_for
from matrixos.catalog.registry import open_catalog as open_catalog
from matrixos.catalog.registry import register_backend as register_backend
