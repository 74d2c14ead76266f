"""Next to the data: each node's file cache, placement by locality, and the per-query report.

On the 3-node cluster (each node with its own cache folder, see conftest.py) with tables on S3
(moto's server) and on local disk; the cache itself is also tested against moto directly:
ETag validation, LRU eviction under its bound, and several processes filling one cache.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import ray
from typer.testing import CliRunner

import matrixos as mx
from matrixos.compute import ComputePool
from matrixos.engine.filecache import FileCache, localize, placement, readable_dirs, storage_zone
from matrixos.engine.sandbox import locked_connection
from matrixos.engine.scan import FileEntry, load_snapshot, make_context, prune, render_scan
from matrixos.storage.options import StorageOptions
from matrixos.storage.warehouse import is_remote

try:  # tests/ imported as a package
    from tests._servers import S3Server
except ModuleNotFoundError:  # pytest's default "prepend" import mode
    from _servers import S3Server  # type: ignore[no-redef]

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]
FILES = 6
ROWS = 60_000
SQL = "SELECT k, count(*) AS n, sum(v) AS s, min(name) AS lo FROM t GROUP BY k ORDER BY k"


def _part(i: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed * 100 + i)
    return pa.table(
        {
            "k": rng.integers(0, 7, ROWS),
            "v": rng.integers(0, 1000, ROWS),  # exact sums: equal to the local engine's
            "name": [f"row-{seed}-{i}-{j}" for j in rng.integers(0, 10**9, ROWS)],
        }
    )


def _load(lh: mx.Lakehouse, seed: int = 0) -> None:
    for i in range(FILES):
        if i == 0:
            lh.create_table("t", _part(i, seed))
        else:
            lh.table("t").append(_part(i, seed))


def _same(lh: mx.Lakehouse, sql: str = SQL) -> dict[str, Any]:
    local = lh.sql(sql, engine="local").to_arrow()
    res = lh.sql(sql, engine="ray")
    assert res.to_arrow().equals(local), f"{sql}\nlocal:\n{local}\nray:\n{res.to_arrow()}"
    return res.stats


def _scanned_bytes(lh: mx.Lakehouse) -> int:
    info = lh.table("t").describe()
    assert info["num_files"] == FILES
    return int(info["size_bytes"])


@pytest.fixture
def s3lh(
    ray_pool: ComputePool, ray_cluster: RayCluster, s3_server: S3Server
) -> Iterator[mx.Lakehouse]:
    """A fresh S3 warehouse (a new bucket: nothing of it cached anywhere) with table t."""
    uri = f"s3://{s3_server.make_bucket()}/wh"
    with mx.connect(
        uri, storage_options=s3_server.storage_options, compute=ray_cluster.address
    ) as lh:
        _load(lh)
        yield lh


def _placements(lh: mx.Lakehouse) -> list[str]:
    plan = [str(x) for x in lh.sql("EXPLAIN " + SQL, engine="ray").to_arrow()["plan"]]
    return [line.split("placement: ", 1)[1] for line in plan if line.startswith("  fragment ")]


def test_repeated_query_reads_less_than_a_tenth_remotely(s3lh: mx.Lakehouse) -> None:
    total = _scanned_bytes(s3lh)
    # Nothing cached yet: each fragment goes to its files' home node, one per node.
    cold_plan = _placements(s3lh)
    assert len(cold_plan) == 3 and all("home node" in p for p in cold_plan)
    assert len({p.split()[1] for p in cold_plan}) == 3
    cold = _same(s3lh)
    assert cold["tasks"] == 3
    assert (cold["cache_hits"], cold["cache_misses"]) == (0, FILES)
    assert cold["bytes_remote"] == total and cold["bytes_local"] == 0
    assert cold["remote_fraction"] == 1.0
    warm = _same(s3lh)
    assert warm["bytes_local"] + warm["bytes_remote"] == total
    assert warm["remote_fraction"] < 0.1, warm
    assert warm["cache_hits"] >= FILES - 1


def test_fragments_land_on_the_node_that_cached_their_files(
    s3lh: mx.Lakehouse, ray_cluster: RayCluster
) -> None:
    _same(s3lh)  # cold: the files go into the caches of the nodes that read them
    _same(s3lh)  # a fragment whose node was busy reads (and caches) elsewhere once
    frags = _placements(s3lh)
    assert len(frags) == 3
    assert all(p.startswith("node 127.0.0.") and "100% cached" in p for p in frags), frags
    stats = _same(s3lh)
    assert stats["cache_misses"] == 0 and stats["bytes_remote"] == 0
    for frag in stats["fragments"]:
        assert frag["node_id"] == frag["planned_node_id"], frag
        assert frag["planned"].startswith(f"node {frag['node']}")
        node = ray_cluster.node_at(frag["node"])
        assert frag["zone"] == node.zone
        assert FileCache(node.cache_dir).usage()["bytes"] >= frag["bytes_local"] > 0


def test_an_overwritten_table_is_read_afresh(s3lh: mx.Lakehouse) -> None:
    _same(s3lh)
    before = s3lh.sql(SQL).to_arrow()
    s3lh.table("t").overwrite(_part(0, seed=7))
    for i in range(1, 3):
        s3lh.table("t").append(_part(i, seed=7))
    stats = _same(s3lh)  # the new version's files: new paths, read from S3
    assert stats["cache_misses"] == 3 and stats["cache_hits"] == 0
    assert not s3lh.sql(SQL).to_arrow().equals(before)
    assert _same(s3lh)["cache_misses"] <= 1


def test_a_local_table_needs_no_cache(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    with mx.connect(str(tmp_path / "wh"), compute=ray_cluster.address) as lh:
        _load(lh)
        stats = _same(lh)
        assert stats["cache_hits"] == stats["cache_misses"] == stats["bytes_remote"] == 0
        assert stats["bytes_local"] == _scanned_bytes(lh)


def test_fragments_go_to_their_storage_zone_when_nothing_is_cached(
    ray_pool: ComputePool, ray_cluster: RayCluster, s3_server: S3Server
) -> None:
    bucket = s3_server.make_bucket()
    zones = {f"s3://{bucket}/": "b", "s3://other/": "c"}
    assert storage_zone(f"s3://{bucket}/wh/t/x.parquet", zones) == "b"
    assert storage_zone("s3://third/x", zones) is None
    with mx.connect(
        f"s3://{bucket}/wh",
        storage_options=s3_server.storage_options,
        compute=ray_cluster.address,
        storage_zones=zones,
    ) as lh:
        _load(lh)
        zone_b = "zone b (the files' storage zone)"
        assert _placements(lh) == [zone_b] * 3
        stats = _same(lh)
        assert [f["planned"] for f in stats["fragments"]] == [zone_b] * 3
        # Ray's label scheduling puts a task in the zone when a node there has room (a task
        # that needs no CPU always does); fragments run elsewhere only while zone b is busy.
        files = [FileEntry(f"s3://{bucket}/wh/t/x.parquet", 1, None, (), {}, {}, {})]
        getenv = ray.remote(num_cpus=0)(os.getenv)  # importable on the workers, unlike tests
        where = getenv.options(scheduling_strategy=placement(files, zones=zones))
        assert ray.get([where.remote("MATRIXOS_ZONE") for _ in range(4)]) == ["b"] * 4


def test_compute_status_shows_each_nodes_cache(
    ray_pool: ComputePool, ray_cluster: RayCluster
) -> None:
    from matrixos.cli import app

    runner = CliRunner()
    args = ["compute", "status", "--compute", ray_cluster.address]
    res = runner.invoke(app, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    nodes = {n["zone"]: n for n in json.loads(res.output)["nodes"] if n["alive"]}
    for zone in "abc":
        cache = nodes[zone]["cache"]
        assert cache["dir"] == ray_cluster.node(zone).cache_dir
        assert 0 <= cache["bytes"] <= cache["max_bytes"] == 256 * 1024 * 1024
    res = runner.invoke(app, args, env={"COLUMNS": "400"})  # wide enough: no cell is cut
    assert res.exit_code == 0, res.output
    assert "256.0 MiB in" in res.output


# -- the cache itself, against moto ---------------------------------------------------------
@pytest.fixture
def bucket(s3_server: S3Server) -> tuple[S3Server, str, StorageOptions]:
    return (
        s3_server,
        s3_server.make_bucket(),
        StorageOptions.from_mapping(s3_server.storage_options),
    )


def test_a_rewritten_object_is_never_served_stale(
    bucket: tuple[S3Server, str, StorageOptions], tmp_path: Path
) -> None:
    s3, name, options = bucket
    client = s3.client()
    uri = f"s3://{name}/data/part-0.parquet"
    cache = FileCache(tmp_path / "cache", 1 << 20)
    client.put_object(Bucket=name, Key="data/part-0.parquet", Body=b"A" * 1000)
    path, hit, size = cache.get(uri, options)
    assert path is not None and not hit and size == 1000
    assert path.read_bytes() == b"A" * 1000
    again, hit, _ = cache.get(uri, options)
    assert hit and again == path
    # Same path, same size, other bytes: only the ETag tells them apart.
    client.put_object(Bucket=name, Key="data/part-0.parquet", Body=b"B" * 1000)
    fresh, hit, _ = cache.get(uri, options)
    assert fresh is not None and not hit and fresh != path
    assert fresh.read_bytes() == b"B" * 1000
    assert not path.exists()  # the stale copy is gone
    assert cache.usage()["files"] == 1


def test_eviction_is_least_recently_used_and_keeps_the_bound(
    bucket: tuple[S3Server, str, StorageOptions], tmp_path: Path
) -> None:
    s3, name, options = bucket
    client = s3.client()
    for i in range(5):
        client.put_object(Bucket=name, Key=f"o{i}", Body=bytes([65 + i]) * 1000)
    cache = FileCache(tmp_path / "cache", 3500)

    def get(i: int) -> bool:
        path, hit, _ = cache.get(f"s3://{name}/o{i}", options)
        assert path is not None and path.read_bytes() == bytes([65 + i]) * 1000
        assert cache.usage()["bytes"] <= 3500
        return hit

    assert [get(i) for i in (0, 1, 2)] == [False] * 3
    assert get(0)  # 0 is now the most recently used
    assert not get(3)  # evicts 1, the least recently used
    assert get(0) and get(2)
    assert not get(1)  # evicts 3
    assert [get(i) for i in (0, 1, 2)] == [True] * 3
    assert cache.usage()["files"] == 3
    big = client.put_object(Bucket=name, Key="big", Body=b"x" * 5000)
    assert big
    assert cache.get(f"s3://{name}/big", options)[0] is None  # larger than the cache


_FILLER = """
import hashlib, json, random, sys
from matrixos.engine.filecache import FileCache
from matrixos.storage.options import StorageOptions

root, bound, bucket, options = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
cache = FileCache(root, bound)
opts = StorageOptions.from_mapping(options)
keys = [f"o{i}" for i in range(8)] * 3
random.shuffle(keys)
seen = {}
for key in keys:
    uri = f"s3://{bucket}/{key}"
    path, hit, size = cache.get(uri, opts)
    _, links = cache.pin("s3://" + bucket, {uri: path})  # eviction cannot take it now
    if uri in links:
        seen[key] = hashlib.sha256(open(links[uri], "rb").read()).hexdigest()
print(json.dumps(seen))
"""


def test_processes_share_one_cache(
    bucket: tuple[S3Server, str, StorageOptions], tmp_path: Path
) -> None:
    s3, name, _ = bucket
    client = s3.client()
    expected = {}
    for i in range(8):
        body = np.random.default_rng(i).bytes(200_000)
        client.put_object(Bucket=name, Key=f"o{i}", Body=body)
        expected[f"o{i}"] = hashlib.sha256(body).hexdigest()
    root, bound = tmp_path / "cache", 5 * 200_000 + 1000
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _FILLER,
                str(root),
                str(bound),
                name,
                json.dumps(s3.storage_options),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0
        seen = json.loads(out)
        assert seen and all(expected[k] == v for k, v in seen.items())
    cache = FileCache(root, bound)
    cache.evict()
    usage = cache.usage()
    assert 0 < usage["bytes"] <= bound
    assert not any((root / "tmp").iterdir())  # no download left half-done
    for entry in (root / "data").glob("*/*"):
        digest = hashlib.sha256(entry.read_bytes()).hexdigest()
        assert digest in expected.values()


def test_a_scan_reads_cached_and_remote_files_alike(
    bucket: tuple[S3Server, str, StorageOptions], tmp_path: Path
) -> None:
    """Files too large for the cache stay on S3; the rest are read from it: same rows."""
    from deltalake import DeltaTable

    s3, name, options = bucket
    sql = "SELECT count(*), sum(v), min(name) FROM ({})"
    with mx.connect(f"s3://{name}/wh", storage_options=s3.storage_options) as lh:
        lh.create_table("t", _part(0).slice(0, 1000))
        for i in (1, 2):
            lh.table("t").append(_part(i).slice(0, 1000))
        lh.table("t").append(_part(3))  # the large one
        expected = lh.sql(sql.format("SELECT * FROM t")).fetchall()
        location = lh.table("t").location
    scan = prune(load_snapshot(DeltaTable(location, storage_options=options.to_delta())), [])
    sizes = sorted(f.size for f in scan.files)
    cache = FileCache(tmp_path / "cache", sizes[-1] - 1)
    local, stats = localize(scan, options, cache)
    assert (stats.hits, stats.misses, stats.bytes_remote) == (0, 4, sum(sizes))
    assert sorted(is_remote(f.path) for f in local.files) == [False, False, False, True]
    assert len(stats.cached) == 3 and all(p.startswith("s3://") for p in stats.cached)
    con = locked_connection(list(readable_dirs(local)))
    ctx = make_context(options, True)
    body = render_scan(local, ctx)
    cur = con.cursor()
    for view, obj in ctx.registrations.items():
        cur.register(view, obj)
    assert cur.sql(sql.format(body)).fetchall() == expected
    cur.close()
    again, stats = localize(scan, options, cache)
    assert (stats.hits, stats.misses, stats.bytes_remote) == (3, 1, sizes[-1])
    pins = {Path(f.path).parent for f in [*local.files, *again.files] if not is_remote(f.path)}
    assert len(pins) == 2 and all(p.exists() for p in pins)
    del local, again, ctx, body
    gc.collect()
    assert not any(p.exists() for p in pins)  # a task's pins go with its scan
