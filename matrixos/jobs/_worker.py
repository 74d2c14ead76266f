"""The process a job runs in: ``python -m matrixos.jobs._worker <payload> <result>``.

``payload`` is a cloudpickled dict written by the job service: ``{"kind": "python", "fn",
"args", "kwargs"}`` or ``{"kind": "sql", "sql", "dialect", "connect", "principal"}``. The
return value (a Python job's, or a SQL job's Arrow table) is cloudpickled to ``result`` when it
pickles in under 64 MiB; an exception is printed (traceback to stderr, so to the job's log),
its one-line summary written to ``<result>.error``, and the exit status is 1.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

_MAX_RESULT = 64 * 1024 * 1024


def _run(payload: dict[str, Any]) -> Any:
    kind = payload["kind"]
    if kind == "python":
        return payload["fn"](*payload.get("args", ()), **payload.get("kwargs", {}))
    if kind == "sql":
        import matrixos as mx
        from matrixos.catalog.access import Principal

        p = payload["principal"]
        principal = Principal(p["name"], frozenset(p["grants"]), frozenset(p["groups"]))
        with mx.connect(**payload["connect"]) as lh:
            result = lh.with_principal(principal).sql(
                payload["sql"], dialect=payload.get("dialect")
            )
            table = result.to_arrow()
            print(f"{table.num_rows} rows")
            return table
    raise ValueError(f"unknown job kind {kind!r}")


def main(argv: list[str]) -> int:
    import cloudpickle

    payload_path, result_path = argv[1], argv[2]
    with open(payload_path, "rb") as f:
        payload = cloudpickle.load(f)
    try:
        value = _run(payload)
    except BaseException as e:
        traceback.print_exc()
        with open(result_path + ".error", "w") as f:
            f.write(f"{type(e).__name__}: {e}"[:2000])
        return 1
    finally:
        sys.stdout.flush()
    try:
        data = cloudpickle.dumps(value)
    except Exception as e:  # a result that cannot travel is not the job's failure
        print(f"the job's return value was not kept: {type(e).__name__}: {e}", file=sys.stderr)
        return 0
    if len(data) <= _MAX_RESULT:
        with open(result_path, "wb") as f:
            f.write(data)
    else:
        print(f"the job's return value was not kept: {len(data)} bytes pickled", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
