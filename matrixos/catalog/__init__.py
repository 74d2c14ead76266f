"""The catalog: names, locations and properties of every table."""

from matrixos.catalog.names import DEFAULT_CATALOG as DEFAULT_CATALOG
from matrixos.catalog.names import DEFAULT_SCHEMA as DEFAULT_SCHEMA
from matrixos.catalog.names import TableIdent as TableIdent
from matrixos.catalog.names import parse_schema as parse_schema
from matrixos.catalog.store import Catalog as Catalog
from matrixos.catalog.store import TableInfo as TableInfo
