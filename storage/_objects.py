"""Objects written at most once: put-if-absent on a local disk and on an object store.

A Delta commit (``_delta_log/<version>.json``) and a Lance merge lease
(``_matrixos/merge-lease/<n>``, :mod:`matrixos.storage._lease`) are both claimed this way: of
two writers creating the same name, exactly one wins and the other is told so.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import fsspec


def put_if_absent(
    path: str, data: bytes, fs: fsspec.AbstractFileSystem | None = None, *, sync: bool = True
) -> bool:
    """Write ``data`` as ``path`` unless it exists, atomically; False when it already existed.

    ``fs``: the object store's filesystem (``path`` without its scheme), whose conditional PUT
    (s3fs ``mode="create"`` sends ``If-None-Match: *``) decides; None for a local path, where a
    finished temporary file is hard-linked (readers see all of it or nothing). With ``sync`` a
    local file and its folder are synced to disk before it counts as written.
    """
    if fs is not None:
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    folder = os.path.dirname(path)
    tmp = os.path.join(folder, f"_commit_{uuid.uuid4().hex}.json.tmp")  # delta-rs's own naming
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # fails if ``path`` exists
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    if not sync:
        return True
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
