"""Node-local cache of table files and locality-aware placement ("next to the data").

Contract shared by the distributed engine (engine/dist/: its planner and runtime) and
the cache implementation:

Worker side (inside a Ray task that reads table files):
    scan, stats = localize(scan, options)
        Returns the scan with each file's path replaced by a node-local cached copy where
        possible (downloading a missing or stale copy first), and what was read where.
        Local-disk tables are returned unchanged (their bytes count as local).

Driver side:
    strategy = placement(files)        # a Ray scheduling_strategy for a task reading `files`
    observe(stats)                     # learn which node holds which files; add to the query's
                                       # report (cache hits, bytes read remotely)

The cache (``FileCache``). Each node keeps object-store files under its own folder
(``Settings.cache_dir`` / ``$MATRIXOS_CACHE_DIR``, default ``~/.cache/matrixos/files``), bounded
by ``Settings.cache_max_bytes`` (``$MATRIXOS_CACHE_MAX_BYTES``) and evicted least recently used
first (a hit touches the file's mtime). An entry is named by the object's URI (with the
endpoint) *and* its ETag and size, so a rewritten object is a different entry: every use asks
the store for the object's ETag (an S3 HEAD, no bytes) and a stale copy is never served. A
download reads with ``If-Match`` on the ETag (s3fs), goes to a temporary file and is renamed
into place, so the several worker processes of a node share one cache safely; a per-entry
lock keeps two of them from downloading the same file at once. A task reads hard links of its
files in a folder of its own (``pins/``), removed when the task's scan is dropped, so another
process evicting them meanwhile cannot pull them from under it.

Placement. The driver remembers which node holds which file (from the ``ReadStats`` it
observes). ``plan_placement`` sends each fragment to the node holding most of its bytes
(``NodeAffinitySchedulingStrategy(node, soft=True)``: it waits for that node while it lives),
at most its share of the fragments per node; else to the storage zone of its files
(``Settings.storage_zones``: URI prefix → zone, matched with the nodes' ``matrixos.io/zone``
label through Ray's ``NodeLabelSchedulingStrategy``, soft); else ``"SPREAD"``.

Per query, ``query_report()`` collects what every observed task read: cache hits and misses,
bytes read locally and remotely, and where each fragment ran.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
import logging
import math
import os
import shutil
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matrixos._lru import LRU
from matrixos.config import ZONE_LABEL, Settings
from matrixos.storage.options import StorageOptions
from matrixos.storage.warehouse import is_remote

if TYPE_CHECKING:
    from matrixos.engine.scan import FileEntry, PrunedScan

__all__ = [
    "CacheReport",
    "FileCache",
    "Placement",
    "ReadStats",
    "forget",
    "localize",
    "node_caches",
    "observe",
    "placement",
    "plan_placement",
    "query_report",
    "storage_zone",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 8 * 1024**3
_CHUNK = 16 * 1024 * 1024
_TMP_MAX_AGE_S = 3600.0
_LOCK_STRIPES = 256
_FETCH_THREADS = 8
_ATTEMPTS = 3


@dataclass
class ReadStats:
    """What one task read: from the node's cache or from the object store."""

    node_id: str = ""
    cached: list[str] = field(default_factory=list)  # file paths now held by node_id
    hits: int = 0
    misses: int = 0
    bytes_local: int = 0
    bytes_remote: int = 0
    address: str | None = None  # the node's address
    zone: str | None = None  # the node's storage zone
    cached_bytes: dict[str, int] = field(default_factory=dict)  # path → size, of `cached`

    def add(self, other: ReadStats) -> None:
        """Count ``other`` (another scan of the same task) in this one."""
        self.node_id = self.node_id or other.node_id
        self.address = self.address or other.address
        self.zone = self.zone or other.zone
        self.cached += [p for p in other.cached if p not in self.cached_bytes]
        self.cached_bytes.update(other.cached_bytes)
        self.hits += other.hits
        self.misses += other.misses
        self.bytes_local += other.bytes_local
        self.bytes_remote += other.bytes_remote


# -- the node's cache ---------------------------------------------------------------------------
def _digest(text: str, n: int = 32) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


class FileCache:
    """A folder of cached object-store files, bounded by ``max_bytes`` (LRU).

    Layout: ``data/<xx>/<key>.<version>`` (key: the URI and endpoint; version: the ETag and
    size), ``tmp/`` (downloads in progress), ``locks/`` (per-entry download locks, and the
    eviction lock), ``pins/<table>/<task>/`` (hard links a running task reads).
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root).expanduser().absolute()
        self.max_bytes = int(max_bytes)
        for sub in ("data", "tmp", "locks", "pins"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FileCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FileCache, (str(self.root), self.max_bytes))

    @classmethod
    def for_node(cls) -> FileCache:
        """This node's cache, as its settings (environment) configure it."""
        return _node_cache()

    # -- entries ------------------------------------------------------------------------------
    def _entry(self, key: str, version: str) -> Path:
        return self.root / "data" / key[:2] / f"{key}.{version}"

    @contextlib.contextmanager
    def _lock(self, name: str, *, blocking: bool = True) -> Iterator[bool]:
        with open(self.root / "locks" / name, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def get(self, uri: str, options: StorageOptions | None) -> tuple[Path | None, bool, int]:
        """``uri`` in this cache: ``(local path, hit, size)``; the path is ``None`` when the
        file is too large to cache (read it remotely). A copy whose ETag or size differs from
        the object's now is never returned: the object is downloaded again."""
        fs = _s3fs(options)
        endpoint = (options.endpoint_url if options else None) or ""
        key = _digest(endpoint + "|" + uri)
        for attempt in range(_ATTEMPTS):
            info = fs.info(uri, refresh=True)  # HEAD: the object's ETag and size, no bytes
            size = int(info["size"])
            path = self._entry(key, _version(info))
            if _usable(path, size):
                return path, True, size
            if size > self.max_bytes:
                return None, False, size
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock(f"{int(key[:8], 16) % _LOCK_STRIPES:03d}.lock"):
                if _usable(path, size):  # another process downloaded it meanwhile
                    return path, True, size
                try:
                    path, size = self._download(fs, uri, key)
                except _Changed:
                    if attempt + 1 == _ATTEMPTS:
                        raise
                    continue
            self.evict(keep={path})
            return path, False, size
        raise AssertionError("unreachable")

    def _download(self, fs: Any, uri: str, key: str) -> tuple[Path, int]:
        from s3fs.utils import FileExpired

        tmp = self.root / "tmp" / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            # s3fs reads with If-Match on the ETag its own HEAD saw: the bytes are that
            # version's, or the read fails (FileExpired) and is tried again.
            with fs.open(uri, "rb", cache_type="none") as src, open(tmp, "wb") as out:
                details = src.details
                size = int(details["size"])
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
            if tmp.stat().st_size != size:
                raise _Changed(uri)
            path = self._entry(key, _version(details))
            os.replace(tmp, path)
        except FileExpired as e:
            raise _Changed(uri) from e
        finally:
            tmp.unlink(missing_ok=True)
        for old in path.parent.glob(key + ".*"):  # older versions of the object
            if old != path:
                old.unlink(missing_ok=True)
        return path, size

    # -- size ---------------------------------------------------------------------------------
    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for sub in os.scandir(self.root / "data"):
            if not sub.is_dir():
                continue
            for f in os.scandir(sub.path):
                with contextlib.suppress(FileNotFoundError):
                    st = f.stat()
                    out.append((st.st_mtime, st.st_size, Path(f.path)))
        return out

    def usage(self) -> dict[str, Any]:
        """``{"dir", "bytes", "files", "max_bytes"}``."""
        entries = self._entries()
        return {
            "dir": str(self.root),
            "bytes": sum(e[1] for e in entries),
            "files": len(entries),
            "max_bytes": self.max_bytes,
        }

    def evict(self, keep: set[Path] | frozenset[Path] = frozenset()) -> int:
        """Remove least recently used entries (not those in ``keep``) until the cache holds at
        most ``max_bytes``; returns the bytes removed. One process evicts at a time (the others
        skip it: the one evicting brings the cache under its bound)."""
        with self._lock("evict.lock", blocking=False) as mine:
            if not mine:
                return 0
            self._sweep()
            entries = sorted(self._entries())
            total = sum(e[1] for e in entries)
            freed = 0
            for _mtime, size, path in entries:
                if total - freed <= self.max_bytes:
                    break
                if path in keep:
                    continue
                path.unlink(missing_ok=True)
                freed += size
            return freed

    def _sweep(self) -> None:
        """Downloads and pins that their processes left behind (they died)."""
        now = time.time()
        for f in os.scandir(self.root / "tmp"):
            with contextlib.suppress(FileNotFoundError):
                if now - f.stat().st_mtime > _TMP_MAX_AGE_S:
                    os.unlink(f.path)
        for table in os.scandir(self.root / "pins"):
            for task in os.scandir(table.path):
                pid = task.name.split("-", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(task.path, ignore_errors=True)

    # -- pins ---------------------------------------------------------------------------------
    def pins_dir(self, location: str) -> Path:
        """Where tasks reading the table at ``location`` keep their pins (the one folder their
        sandboxed DuckDB may read)."""
        return self.root / "pins" / _digest(location, 16)

    def pin(self, location: str, files: Mapping[str, Path]) -> tuple[Path, dict[str, str]]:
        """Hard links of ``files`` (uri → cached path) in a new folder of this task's:
        eviction cannot remove what a running query reads. Returns the folder and uri → link."""
        folder = self.pins_dir(location) / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        out = {}
        for i, (uri, path) in enumerate(files.items()):
            link = folder / f"{i}-{uri.rsplit('/', 1)[-1]}"
            try:
                os.link(path, link)
            except FileNotFoundError:
                continue  # evicted in the meantime: read it remotely
            except OSError:
                shutil.copyfile(path, link)  # a file system without hard links
            out[uri] = str(link)
        return folder, out


class _Changed(Exception):
    """The object changed while it was downloaded."""


def _version(info: Mapping[str, Any]) -> str:
    tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or ""
    return f"{_digest(str(tag).strip(chr(34)), 16)}.{int(info['size'])}"


def _usable(path: Path, size: int) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if st.st_size != size:
        return False
    with contextlib.suppress(OSError):
        os.utime(path)  # most recently used
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _s3fs(options: StorageOptions | None) -> Any:
    return (options or StorageOptions.from_mapping(None)).s3fs()


@cache
def _node_cache() -> FileCache:
    settings = Settings()
    return FileCache(_cache_dir(settings.cache_dir), settings.cache_max_bytes)


def _cache_dir(configured: str | None) -> str:
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "matrixos", "files")


def _node() -> tuple[str, str | None, str | None]:
    """This process's Ray node: id, address and storage zone (empty outside Ray)."""
    zone = os.environ.get("MATRIXOS_ZONE") or None
    try:
        import ray

        if not ray.is_initialized():
            return "", None, zone
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), ray.util.get_node_ip_address(), zone
    except Exception:
        return "", None, zone


# -- worker side --------------------------------------------------------------------------------
def localize(
    scan: PrunedScan, options: StorageOptions | None, cache: FileCache | None = None
) -> tuple[PrunedScan, ReadStats]:
    """``scan`` reading node-local copies of its object-store files (see the module's doc)."""
    node_id, address, zone = _node()
    stats = ReadStats(node_id=node_id, address=address, zone=zone)
    if not scan.files or not is_remote(scan.snapshot.location):
        stats.bytes_local = sum(f.size for f in scan.files)
        return scan, stats
    cache = cache or FileCache.for_node()
    remote = [f for f in scan.files if is_remote(f.path)]

    def fetch(f: FileEntry) -> tuple[FileEntry, Path | None, bool, int]:
        try:
            return (f, *cache.get(f.path, options))
        except (OSError, _Changed) as e:  # the cache cannot help: read it remotely
            log.warning("file cache: reading %s remotely (%s)", f.path, e)
            return f, None, False, f.size

    with ThreadPoolExecutor(min(_FETCH_THREADS, max(1, len(remote)))) as pool:
        fetched = list(pool.map(fetch, remote))
    held = {f.path: p for f, p, _, _ in fetched if p is not None}
    folder, links = cache.pin(scan.snapshot.location, held) if held else (None, {})
    for f, _, hit, size in fetched:
        if f.path in links:
            stats.cached.append(f.path)
            stats.cached_bytes[f.path] = size
        if hit and f.path in links:
            stats.hits += 1
            stats.bytes_local += size
        else:
            stats.misses += 1
            stats.bytes_remote += size
    stats.bytes_local += sum(f.size for f in scan.files if not is_remote(f.path))
    if not links:
        return scan, stats
    snap = scan.snapshot
    moved = {f.path: replace(f, path=links[f.path]) for f in scan.files if f.path in links}
    local = replace(
        scan,
        snapshot=replace(
            snap,
            files=[moved.get(f.path, f) for f in snap.files],
            deletion_vectors={links.get(p, p): m for p, m in snap.deletion_vectors.items()},
        ),
        files=[moved.get(f.path, f) for f in scan.files],
    )
    # The pins go when the caller drops the scan (keep it while DuckDB reads the files).
    assert folder is not None
    weakref.finalize(local, shutil.rmtree, str(folder), True)
    return local, stats


def readable_dirs(scan: PrunedScan) -> tuple[str, ...]:
    """The folders a sandboxed DuckDB must be allowed to read for ``scan`` (after
    ``localize``): the table's folder for a local table, else its cache pins folder."""
    location = scan.snapshot.location
    if not is_remote(location):
        return (location.rstrip("/") + "/",)
    # pins/<table>/<task>/<file>: the table's pins folder (one DuckDB connection serves it)
    pins = {os.path.dirname(os.path.dirname(f.path)) for f in scan.files if not is_remote(f.path)}
    return tuple(sorted(p + "/" for p in pins))


# -- driver side --------------------------------------------------------------------------------
_MAX_REMEMBERED = 200_000
_LOCATIONS: LRU[str, dict[str, int]] = LRU(_MAX_REMEMBERED)  # path → node id → bytes
_LOCATIONS_LOCK = threading.Lock()


@dataclass
class Placement:
    """Where a fragment is planned to run, and why."""

    strategy: Any  # a Ray scheduling_strategy
    node_id: str | None = None  # soft node affinity
    address: str | None = None
    zone: str | None = None  # soft label affinity to the storage zone
    cached_bytes: int = 0  # of the fragment's bytes, held by node_id
    total_bytes: int = 0

    def describe(self) -> str:
        if self.node_id:
            where = f"node {self.address or self.node_id[:12]}"
            where += f" (zone {self.zone})" if self.zone else ""
            if not self.cached_bytes:
                return f"{where}, the files' home node (nothing cached yet; any node if busy)"
            share = self.cached_bytes / self.total_bytes if self.total_bytes else 1.0
            return f"{where}, {share:.0%} cached there"
        if self.zone:
            return f"zone {self.zone} (the files' storage zone)"
        return "any node (spread; nothing cached yet)"


@dataclass
class _NodeInfo:
    node_id: str
    address: str
    zone: str | None
    cpus: float


_NODES: tuple[float, list[_NodeInfo]] = (0.0, [])
_NODES_TTL_S = 2.0


def _alive_nodes() -> list[_NodeInfo]:
    global _NODES
    try:
        import ray

        if not ray.is_initialized():
            return []
    except ImportError:
        return []
    stamp, nodes = _NODES
    if time.monotonic() - stamp < _NODES_TTL_S:
        return nodes
    nodes = [
        _NodeInfo(
            n["NodeID"],
            n.get("NodeManagerAddress") or "",
            (n.get("Labels") or {}).get(ZONE_LABEL),
            float((n.get("Resources") or {}).get("CPU", 0)),
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]
    _NODES = (time.monotonic(), nodes)
    return nodes


def storage_zone(path: str, zones: Mapping[str, str] | None) -> str | None:
    """The zone of the longest prefix of ``path`` in ``zones`` (URI prefix → zone)."""
    best: tuple[int, str | None] = (-1, None)
    for prefix, zone in (zones or {}).items():
        if path.startswith(prefix) and len(prefix) > best[0]:
            best = (len(prefix), zone)
    return best[1]


def plan_placement(
    fragments: Sequence[Sequence[FileEntry]], *, zones: Mapping[str, str] | None = None
) -> list[Placement]:
    """Where each fragment should run: the alive node holding most of its bytes in its cache
    (each node taking at most its share of the fragments, by CPUs); else its files' storage
    zone; else, for object-store files, a "home" node picked by rendezvous hashing of the
    fragment's largest file (the same files go to the same node from query to query and
    driver to driver, so the caches fill evenly); else ``"SPREAD"``."""
    nodes = {n.node_id: n for n in _alive_nodes()}
    out: list[Placement | None] = [None] * len(fragments)
    held: list[dict[str, int]] = []
    with _LOCATIONS_LOCK:
        for files in fragments:
            by_node: dict[str, int] = {}
            for f in files:
                for node_id in _LOCATIONS.get(f.path) or {}:
                    if node_id in nodes:
                        by_node[node_id] = by_node.get(node_id, 0) + f.size
            held.append(by_node)
    cpus = sum(n.cpus for n in nodes.values()) or 1.0
    cap = {k: max(1, math.ceil(len(fragments) * n.cpus / cpus)) for k, n in nodes.items()}
    load = dict.fromkeys(nodes, 0)
    # Fragments with the most bytes cached somewhere choose first.
    order = sorted(range(len(fragments)), key=lambda i: -max(held[i].values(), default=0))
    for i in order:
        total = sum(f.size for f in fragments[i])
        for node_id, size in sorted(held[i].items(), key=lambda kv: -kv[1]):
            if load[node_id] < cap[node_id]:
                load[node_id] += 1
                out[i] = _on_node(nodes[node_id], total, cached=size)
                break
    for i in order:
        if out[i] is not None:
            continue
        files = fragments[i]
        total = sum(f.size for f in files)
        zone = _zone_of(files, zones)
        free = [k for k in nodes if load[k] < cap[k]]
        if zone is not None and any(n.zone == zone for n in nodes.values()):
            out[i] = _in_zone(zone, total)
        elif free and any(is_remote(f.path) for f in files):
            largest = max(files, key=lambda f: f.size).path
            home = max(free, key=lambda k: _digest(f"{k}|{largest}"))
            load[home] += 1
            out[i] = _on_node(nodes[home], total, cached=0)
        else:
            out[i] = Placement("SPREAD", total_bytes=total)
    return [p for p in out if p is not None]


def _on_node(node: _NodeInfo, total: int, *, cached: int) -> Placement:
    """Soft affinity to ``node``: where it holds cached files, the task waits for it while it
    lives; a home node without them may be passed over when it is busy."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return Placement(
        NodeAffinitySchedulingStrategy(node.node_id, soft=True, _spill_on_unavailable=not cached),
        node_id=node.node_id,
        address=node.address,
        zone=node.zone,
        cached_bytes=cached,
        total_bytes=total,
    )


def _zone_of(files: Sequence[FileEntry], zones: Mapping[str, str] | None) -> str | None:
    by_zone: dict[str, int] = {}
    for f in files:
        zone = storage_zone(f.path, zones)
        if zone:
            by_zone[zone] = by_zone.get(zone, 0) + f.size
    return max(by_zone, key=lambda z: by_zone[z]) if by_zone else None


def _in_zone(zone: str, total: int) -> Placement:
    """Ray's label scheduling, soft: a node of ``zone`` when one has room, else any."""
    from ray.util.scheduling_strategies import In, NodeLabelSchedulingStrategy

    strategy = NodeLabelSchedulingStrategy(hard={}, soft={ZONE_LABEL: In(zone)})
    return Placement(strategy, zone=zone, total_bytes=total)


def placement(files: list[FileEntry], *, zones: Mapping[str, str] | None = None) -> Any:
    """A Ray scheduling_strategy for one task reading ``files`` (see ``plan_placement``)."""
    return plan_placement([files], zones=zones)[0].strategy


def forget() -> None:
    """Forget which node holds which file (the caches themselves stay)."""
    with _LOCATIONS_LOCK:
        _LOCATIONS.clear()


@dataclass
class CacheReport:
    """What the tasks of one query read, where."""

    tasks: int = 0
    hits: int = 0
    misses: int = 0
    bytes_local: int = 0
    bytes_remote: int = 0
    fragments: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bytes_read(self) -> int:
        return self.bytes_local + self.bytes_remote

    @property
    def remote_fraction(self) -> float:
        return self.bytes_remote / self.bytes_read if self.bytes_read else 0.0

    def add(self, stats: ReadStats, planned: Placement | None = None) -> None:
        self.tasks += 1
        self.hits += stats.hits
        self.misses += stats.misses
        self.bytes_local += stats.bytes_local
        self.bytes_remote += stats.bytes_remote
        self.fragments.append(
            {
                "node_id": stats.node_id,
                "node": stats.address,
                "zone": stats.zone,
                "planned_node_id": planned.node_id if planned else None,
                "planned": planned.describe() if planned else None,
                "hits": stats.hits,
                "misses": stats.misses,
                "bytes_local": stats.bytes_local,
                "bytes_remote": stats.bytes_remote,
            }
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "bytes_local": self.bytes_local,
            "bytes_remote": self.bytes_remote,
            "remote_fraction": self.remote_fraction,
            "fragments": list(self.fragments),
        }


_REPORT: contextvars.ContextVar[CacheReport | None] = contextvars.ContextVar(
    "matrixos_cache_report", default=None
)


@contextlib.contextmanager
def query_report() -> Iterator[CacheReport]:
    """Collect what the tasks observed inside the block read (one query's report)."""
    report = CacheReport()
    token = _REPORT.set(report)
    try:
        yield report
    finally:
        _REPORT.reset(token)


def observe(stats: ReadStats, planned: Placement | None = None) -> None:
    """Remember the files ``stats.node_id`` now holds, and count ``stats`` in the current
    query's report (``query_report``)."""
    if stats.node_id:
        with _LOCATIONS_LOCK:
            for path in stats.cached:
                nodes = _LOCATIONS.get(path) or {}
                nodes[stats.node_id] = stats.cached_bytes.get(path, 0)
                _LOCATIONS.put(path, nodes)  # the most recently used; the oldest go first
    report = _REPORT.get()
    if report is not None:
        report.add(stats, planned)


# -- the pool's caches ------------------------------------------------------------------------
def _cache_usage() -> dict[str, Any]:
    node_id, _, _ = _node()
    return {"node_id": node_id, **FileCache.for_node().usage()}


def node_caches(timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
    """Each alive node's cache (``dir``, ``bytes``, ``files``, ``max_bytes``), by node id;
    a node that does not answer within ``timeout_s`` is left out."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_cache_usage)
    refs = [
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False)
        ).remote()
        for n in _alive_nodes()
    ]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    out = {}
    for ref in ready:
        with contextlib.suppress(Exception):
            usage = ray.get(ref)
            out[usage.pop("node_id")] = usage
    return out
