"""MatrixOS: a unified data-and-compute lakehouse.

The public names are imported on first use (PEP 562), so ``import matrixos`` stays fast; the
catalog (SQLAlchemy), settings (pydantic) and engines load when a session needs them.

Example:
    >>> import matrixos as mx
    >>> lh = mx.connect()  # ./warehouse, or $MATRIXOS_WAREHOUSE
    >>> lh.sql("SELECT 1 + 1").scalar()
    2
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matrixos import errors as errors
    from matrixos.config import Settings as Settings
    from matrixos.engine.result import Result as Result
    from matrixos.errors import MatrixOSError as MatrixOSError
    from matrixos.session import Lakehouse as Lakehouse
    from matrixos.session import connect as connect
    from matrixos.table import Table as Table

__version__ = "0.1.0"

_LAZY = {
    "Lakehouse": "matrixos.session",
    "MatrixOSError": "matrixos.errors",
    "Result": "matrixos.engine.result",
    "Settings": "matrixos.config",
    "Table": "matrixos.table",
    "connect": "matrixos.session",
}

__all__ = ["Lakehouse", "MatrixOSError", "Result", "Settings", "Table", "connect", "errors"]


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("matrixos.errors")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'matrixos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext matrixos`` registers the ``%%sql`` cell magic."""
    from matrixos.magic import register

    register(ipython)
