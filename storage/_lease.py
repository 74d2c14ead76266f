"""A per-table merge lease: MatrixOS merges that insert keys into one Lance table run one at a
time, from reading the version they plan on to the end of their commit.

Why: Lance does not check most merges against a concurrent merge inserting the same key
(``storage/_lance_merge.py``); serialized, the second merge reads the table after the first
one's commit, finds the key and updates it. How, by where the table lives:

- **A local path**: ``fcntl.flock`` on ``<table>/_matrixos/merge.lock``. The kernel releases it
  when its holder exits, even killed -9, so the next taker proceeds at once; it cannot be lost
  while its holder lives (:attr:`Lease.lossable` is False).
- **S3** (s3fs; conditional PUT ``If-None-Match: *``, which AWS S3, MinIO and moto honour): a
  sequence of objects ``<table>/_matrixos/merge-lease/<n, 20 digits>`` each created with
  put-if-absent, like a Delta log, so no conditional delete is needed. Object ``n`` says "held
  by its writer"; ``<n>.released`` next to it says it was given back. To acquire, LIST: when
  the highest ``n`` is released, or expired (its LastModified, or the moment this taker first
  saw it, more than the TTL ago: a live holder makes ``n+1`` every TTL/3 from a small thread),
  create ``n+1``; of several takers exactly one creates it. A LIST after the create checks that
  ``n+1`` is the highest (old objects are deleted, so a writer that stalled between its LIST and
  its create could re-create a deleted number; it is then never the highest). A holder that
  stalled past the TTL loses the lease (:meth:`Lease.lost`): another merge may then run beside
  it, which the recorded repair of ``storage/_lance_merge.py`` still covers (``lossable``).
- **memory://**: the dataset lives in one process; a lock of that process.

Waiting takers poll with backoff and give up with ``ConcurrentWriteError`` after
:data:`WAIT_ENV` seconds (default 120). :data:`TTL_ENV` sets the S3 lease's time to live
(default 30 s; a taker uses the longer of its own TTL and the holder's). Lance ignores the
``_matrixos`` folder: opening, versions, compaction and ``cleanup_old_versions`` never look at
it (``tests/storage/test_lance_merge_race.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matrixos._filelock import locked
from matrixos.errors import ConcurrentWriteError
from matrixos.storage._errors import storage_errors
from matrixos.storage._objects import put_if_absent

log = logging.getLogger(__name__)

#: The folder inside a table that holds the lease (Lance ignores it).
LEASE_DIR = "_matrixos"
#: Seconds an S3 lease lives without renewal (a holder renews every third of it).
TTL_ENV = "MATRIXOS_MERGE_LEASE_TTL"
#: Seconds a merge waits for the lease before ``ConcurrentWriteError``.
WAIT_ENV = "MATRIXOS_MERGE_LEASE_WAIT"
DEFAULT_TTL = 30.0
DEFAULT_WAIT = 120.0
#: Old lease objects are deleted once this many have piled up (one bulk DELETE).
_CLEANUP_AT = 8
#: S3 lease prefix → the number this process released last: its next taker here first tries
#: to create the next number directly (a PUT and a check instead of a LIST first).
_RELEASED: dict[str, int] = {}
_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class Lease:
    """A held merge lease."""

    #: Whether the lease can be lost while its holder lives (an S3 lease whose holder stalled
    #: past the TTL); a local one cannot.
    lossable = False
    #: Whether it was taken over from a holder that let it expire (died, or stalled).
    took_over = False

    def lost(self) -> bool:
        """Whether the lease may be another writer's by now: taken over (known at the last
        renewal), or not renewed for two thirds of its TTL (its holder stalled, so a taker may
        find it expired before a renewal could tell). Checked right before a commit."""
        return False


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        from matrixos.errors import ConfigError

        raise ConfigError(f"{env}={raw!r} is not a positive number of seconds")
    return value


@contextlib.contextmanager
def merge_lease(
    location: str,
    storage_options: Mapping[str, str] | None = None,
    *,
    what: str = "merge",
    on_wait: Callable[[], None] | None = None,
) -> Iterator[Lease]:
    """Hold the merge lease of the table at ``location`` for the ``with`` block.

    Raises:
        ConcurrentWriteError: another writer held it for longer than :data:`WAIT_ENV` seconds.
    """
    wait = _seconds(WAIT_ENV, DEFAULT_WAIT)
    with contextlib.ExitStack() as stack:
        if location.startswith(("s3://", "s3a://")):
            shared = ObjectLease(location, storage_options, _seconds(TTL_ENV, DEFAULT_TTL))
            with storage_errors(f"cannot take the merge lease of {location}", location):
                held = shared.acquire(wait, on_wait)
            if held:
                stack.callback(shared.release)
            lease: Lease = shared
        elif location.startswith("memory://"):  # the dataset lives in this process only
            lease = Lease()
            with _PROCESS_LOCKS_GUARD:
                lock = _PROCESS_LOCKS.setdefault(location, threading.Lock())
            held = lock.acquire(blocking=False)
            if not held and on_wait is not None:
                on_wait()
            held = held or lock.acquire(timeout=wait)
            if held:
                stack.callback(lock.release)
        else:
            lease = Lease()
            folder = Path(location.removeprefix("file://")) / LEASE_DIR
            with storage_errors(f"cannot take the merge lease of {location}", location):
                folder.mkdir(exist_ok=True)
            try:
                stack.enter_context(locked(folder / "merge.lock", timeout=wait, on_wait=on_wait))
                held = True
            except TimeoutError:
                held = False
        if not held:
            raise ConcurrentWriteError(
                f"{what} on {location} waited {wait:g} s for another merge into the table to "
                "finish; nothing was written",
                hint=f"retry later, or raise {WAIT_ENV}",
            )
        yield lease


class ObjectLease(Lease):
    """The lease on an object store: a sequence of put-if-absent objects (module docstring)."""

    lossable = True

    def __init__(self, location: str, storage_options: Mapping[str, str] | None, ttl: float):
        from matrixos.storage.options import StorageOptions
        from matrixos.storage.warehouse import filesystem_for

        self.fs = filesystem_for(location, StorageOptions.from_mapping(storage_options))
        self.prefix = f"{location.split('://', 1)[1].rstrip('/')}/{LEASE_DIR}/merge-lease"
        self.ttl = ttl
        self.holder = uuid.uuid4().hex
        self.number = 0  # the object this holder made last (0: none)
        self._lost = False
        self._renewed = time.monotonic()  # when the request that made ``number`` started
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._ttls: dict[int, float] = {}  # other holders' TTLs, read from their objects

    def _path(self, n: int, suffix: str = "") -> str:
        return f"{self.prefix}/{n:020d}{suffix}"

    def _list(self) -> tuple[dict[int, dict[str, Any]], set[int]]:
        """The lease objects (number → listing entry) and the numbers released."""
        try:
            entries = self.fs.ls(self.prefix, detail=True, refresh=True)
        except FileNotFoundError:
            return {}, set()
        numbers: dict[int, dict[str, Any]] = {}
        released: set[int] = set()
        for entry in entries:
            base = str(entry["name"]).rsplit("/", 1)[-1]
            if base.endswith(".released") and base[: -len(".released")].isdigit():
                released.add(int(base[: -len(".released")]))
            elif base.isdigit():
                numbers[int(base)] = entry
        return numbers, released

    def _create(self, n: int) -> bool:
        """Create object ``n`` as ours; False when it exists."""
        body = {"holder": self.holder, "ttl": self.ttl, "pid": os.getpid()}
        body["host"] = socket.gethostname()
        return put_if_absent(self._path(n), json.dumps(body).encode(), self.fs)

    def _is_highest(self, n: int) -> bool:
        """Whether ``n`` is the highest object: a number re-created after its deletion never
        is (see the module docstring)."""
        numbers, released = self._list()
        if max(numbers, default=0) != n:
            return False
        self._cleanup(n, numbers, released)
        return True

    def acquire(self, wait: float, on_wait: Callable[[], None] | None) -> bool:
        """Take the lease, waiting up to ``wait`` seconds; False if it stayed held."""
        last = _RELEASED.pop(self.prefix, 0)
        self._renewed = time.monotonic()
        if last and self._create(last + 1) and self._is_highest(last + 1):
            self._won(last + 1, took_over=False)  # this process gave back the last one
            return True
        deadline = time.monotonic() + wait
        delay = 0.01
        seen = (0, time.monotonic())  # the highest object, and when this taker first saw it
        while True:
            numbers, released = self._list()
            top = max(numbers, default=0)
            if top != seen[0]:
                seen = (top, time.monotonic())
            free = top == 0 or top in released
            if free or self._expired(top, numbers[top], time.monotonic() - seen[1]):
                if not free:
                    log.warning("taking over the expired merge lease %s", self._path(top))
                self._renewed = time.monotonic()
                if self._create(top + 1) and self._is_highest(top + 1):
                    self._won(top + 1, took_over=not free)
                    return True
            if on_wait is not None:  # held by another writer (or it just won the race)
                on_wait()
                on_wait = None
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 1.5, 0.25)

    def _won(self, n: int, *, took_over: bool) -> None:
        self.number, self.took_over = n, took_over
        self._renewer = threading.Thread(target=self._renew, name="matrixos-lease", daemon=True)
        self._renewer.start()

    def _expired(self, n: int, entry: Mapping[str, Any], watched: float) -> bool:
        """Whether object ``n`` is older than its TTL by its LastModified (the store's clock
        against ours), or this taker has watched it stay the highest for that long."""
        modified = entry.get("LastModified")
        # S3 stamps whole seconds: the object may be up to a second younger than it says
        age = (datetime.now(UTC) - modified).total_seconds() - 1.0 if modified else 0.0
        if max(age, watched) <= self.ttl:
            return False
        ttl = self._ttls.get(n)
        if ttl is None:  # the holder's own TTL may be longer than ours
            try:
                ttl = float(json.loads(self.fs.cat_file(self._path(n))).get("ttl", self.ttl))
            except (FileNotFoundError, ValueError, TypeError, AttributeError):
                ttl = self.ttl
            self._ttls[n] = ttl
        return max(age, watched) > max(ttl, self.ttl)

    def _cleanup(self, top: int, numbers: Mapping[int, Any], released: set[int]) -> None:
        """Delete the objects before the one below ``top``, once enough have piled up."""
        old = [n for n in numbers if n < top - 1]
        old_marks = [n for n in released if n < top - 1]
        if len(old) + len(old_marks) < _CLEANUP_AT:
            return
        paths = [self._path(n) for n in old] + [self._path(n, ".released") for n in old_marks]
        try:
            self.fs.rm(paths)
        except Exception as e:  # the next holder tries again
            log.info("could not delete old merge lease objects: %s", e)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with self._guard:
                if self._stop.is_set() or self._lost:
                    return
                n = self.number + 1
                started = time.monotonic()
                try:
                    # (when n exists and is ours, an earlier try created it, then failed)
                    ours = self._create(n) or self._holder_of(n) == self.holder
                    ours = ours and self._is_highest(n)
                except Exception as e:  # a failed request: try again at the next tick
                    log.warning("could not renew the merge lease %s: %s", self.prefix, e)
                    continue
                if not ours:
                    log.warning("lost the merge lease %s (stalled past its TTL?)", self.prefix)
                    self._lost = True
                    return
                self.number, self._renewed = n, started

    def _holder_of(self, n: int) -> str | None:
        try:
            return str(json.loads(self.fs.cat_file(self._path(n))).get("holder"))
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            return None

    def lost(self) -> bool:
        return self._lost or time.monotonic() - self._renewed > self.ttl * 2 / 3

    def release(self) -> None:
        """Give the lease back: ``<n>.released`` (harmless when it was lost meanwhile)."""
        self._stop.set()
        with self._guard:
            if self._lost or not self.number:
                return
            try:
                self.fs.pipe_file(self._path(self.number, ".released"), b"")
            except Exception as e:  # the lease then expires after its TTL
                log.warning("could not release the merge lease %s: %s", self.prefix, e)
                return
            _RELEASED[self.prefix] = self.number
