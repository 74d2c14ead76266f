"""Reading a Delta log on an object store without delta-rs: is a snapshot still the latest?

``DeltaStore.is_latest`` asks it before every statement on a table it has a snapshot of (the
SQL engine's kept plans, the service's snapshot cache). On a local disk two ``stat`` calls tell
it; on S3 one ListObjectsV2 of the log, starting just before the snapshot's version, lists its
commit (or checkpoint) and any later commit: one request, where delta-rs's
``update_incremental`` lists the log and reads ``_last_checkpoint`` (two, ~2x the time on moto)
and two HEADs cost two requests too (a 404 HEAD through pyarrow adds a LIST).
"""

from __future__ import annotations

from collections.abc import Mapping

from matrixos.storage.options import StorageOptions

__all__ = ["is_latest_on_s3"]


def is_latest_on_s3(location: str, storage_options: Mapping[str, str] | None, v: int) -> bool:
    """Whether version ``v`` is the latest of the Delta table at ``location`` (``s3://`` or
    ``s3a://``): its commit or a checkpoint at it still in the log (a table deleted and made
    again with fewer versions is not taken for it) and no later commit. Any doubt (another
    store, a failed request, a page of version-``v`` files only) says no: the caller refreshes
    the snapshot, which reports a real failure."""
    scheme, _, rest = location.partition("://")
    if scheme not in ("s3", "s3a"):
        return False
    bucket, _, key = rest.partition("/")
    prefix = (key.strip("/") + "/" if key.strip("/") else "") + "_delta_log/"
    mine = f"{v:020d}."
    try:
        fs = StorageOptions.from_mapping(storage_options or {}).s3fs()
        page = fs.call_s3(
            "list_objects_v2",
            Bucket=bucket,
            Prefix=prefix,
            StartAfter=prefix + f"{v:020d}",
            MaxKeys=16,
        )
    except Exception:  # the refresh that follows reports a real failure
        return False
    found = False
    for item in page.get("Contents", []):
        name = str(item["Key"])[len(prefix) :]
        if name.startswith(mine):
            found = found or name.endswith(".json") or ".checkpoint." in name
        elif name[:20].isdigit():
            return False  # a later version's file
        else:
            return found  # past the numbered files (_last_checkpoint, temporary commits)
    return found and not page.get("IsTruncated")
