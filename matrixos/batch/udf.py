"""Calling a batch UDF, in this process or on a Ray worker: the batch in the format the UDF
asks for, what it returns as Arrow, and its errors carried back as values."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from matrixos.storage.arrow import to_arrow_table

BatchFormat = Literal["pyarrow", "pandas", "numpy"]


@dataclass(frozen=True)
class Failure:
    """A UDF error, carried back as a value (picklable, whatever the exception was)."""

    kind: str
    message: str
    trace: str


def to_format(batch: pa.Table, batch_format: BatchFormat) -> Any:
    """``batch`` as the UDF takes it: Arrow, pandas, or a dict of numpy arrays."""
    if batch_format == "pandas":
        return batch.to_pandas()
    if batch_format == "numpy":
        return {
            name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names
        }
    return batch


def _column(values: Any) -> Any:
    """A column from a UDF's dict: 2-D numpy arrays (embeddings) become fixed-size lists."""
    ndim = getattr(values, "ndim", 1)
    if ndim == 2:
        import numpy as np

        arr = np.ascontiguousarray(values)
        flat = pa.array(arr.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, int(arr.shape[1]))
    return values


def to_output_table(out: Any) -> pa.Table:
    """What a UDF returned (Arrow table or batch, pandas, Polars, dict of columns) as Arrow."""
    if isinstance(out, Mapping):
        return pa.table({k: _column(v) for k, v in out.items()})
    return to_arrow_table(out)


def apply_udf(fn: Callable[[Any], Any], batch: pa.Table, batch_format: BatchFormat) -> Any:
    """``fn(batch)`` as an Arrow table, or a ``Failure`` naming what went wrong."""
    try:
        out = fn(to_format(batch, batch_format))
        if out is None:
            raise TypeError("the function returned None; return the batch (a table or dict)")
        return to_output_table(out)
    except Exception as e:
        return Failure(type(e).__name__, str(e), traceback.format_exc(limit=8))


def map_batch(fn: Callable[[Any], Any], batch: pa.Table, batch_format: BatchFormat) -> Any:
    """The Ray task of a plain-function UDF (its worker is titled ``ray::map_batch``)."""
    return apply_udf(fn, batch, batch_format)


class MapBatchesWorker:
    """The Ray actor of a callable-class UDF: the class is built once, then called per batch.

    A constructor error is reported with the first batch rather than crashing the actor (which
    Ray would restart, and fail again, ``max_restarts`` times).
    """

    def __init__(self, cls: type, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        self.fn: Callable[[Any], Any] | None = None
        self.error: Failure | None = None
        try:
            self.fn = cls(*args, **kwargs)
        except Exception as e:
            self.error = Failure(
                type(e).__name__,
                f"constructing {cls.__name__} failed: {e}",
                traceback.format_exc(limit=8),
            )

    def run(self, batch: pa.Table, batch_format: BatchFormat) -> Any:
        if self.fn is None:
            assert self.error is not None
            return self.error
        return apply_udf(self.fn, batch, batch_format)
