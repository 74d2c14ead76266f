"""MatrixOS: a unified data-and-compute lakehouse.

Example:
    >>> import matrixos as mx
    >>> lh = mx.connect()  # doctest: +SKIP
"""

from matrixos import errors as errors
from matrixos.config import Settings as Settings
from matrixos.engine.result import Result as Result
from matrixos.errors import MatrixOSError as MatrixOSError
from matrixos.session import Lakehouse as Lakehouse
from matrixos.session import connect as connect
from matrixos.table import Table as Table

__version__ = "0.1.0"

__all__ = ["Lakehouse", "MatrixOSError", "Result", "Settings", "Table", "connect", "errors"]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext matrixos`` registers the ``%%sql`` cell magic."""
    from matrixos.magic import register

    register(ipython)
