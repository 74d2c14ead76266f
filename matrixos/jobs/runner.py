"""Where a job's processes run: on this machine (``compute="local"``) or as a gang on Ray.

A job's bundle (CPUs, GPUs, memory on one node) runs one process, ``python -m
matrixos.jobs._worker`` (a Python or SQL job) or the job's own command (an entrypoint), watched
by a ``Supervisor``: it starts the process in a session of its own with its output in a
temporary folder, reports its exit status and new output, sends SIGTERM and, after the grace
period, SIGKILL, and deletes its folder at the end.

- Local: one supervisor per job in the scheduler's process (``LocalPool``, a one-node pool of
  this machine's CPUs).
- Ray (``RayPool``): a gang is one placement group named ``mx-job-<id>`` with a bundle per
  node, each bundle pinned to the node the policy chose; a supervisor actor per bundle
  (``mx-job-<id>-<rank>``) is scheduled into its bundle (``PlacementGroupSchedulingStrategy``),
  so Ray sets the bundle's GPUs for it. The placement group and actors belong to the
  scheduler's driver: if that process dies, Ray removes them with it (and the new scheduler
  requeues the job); ``RayPool.orphans`` removes any ``mx-job-`` group or actor no live job owns.

A gang is all or nothing: its processes start only once every bundle is placed, and when one
rank ends with an error or is lost, the others are stopped and the whole gang is released.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from matrixos._nvidia import nvidia_smi
from matrixos.jobs.specs import NodeSpec

__all__ = [
    "NAME_PREFIX",
    "Bundle",
    "LaunchSpec",
    "LocalPool",
    "Outcome",
    "Pool",
    "RayPool",
    "Run",
    "Supervisor",
    "accelerator_traits",
    "job_of",
    "live_job_actors",
    "live_job_groups",
    "python_argv",
]

#: Placement groups and actors of MatrixOS jobs are named ``mx-job-<job id>-<attempt>[-<rank>]``.
NAME_PREFIX = "mx-job-"
_NAMESPACE = "matrixos"
_LOG_CHUNK = 1 << 20
# GPU memory (GB) and BF16 support of the usual accelerators, for requests that name
# constraints instead of types (``min_gpu_memory_gb``, ``bf16``).
_TRAITS: dict[str, tuple[float, bool]] = {
    "H200": (141, True),
    "H100": (80, True),
    "A100": (80, True),
    "L40S": (48, True),
    "L4": (24, True),
    "A10": (24, True),
    "A10G": (24, True),
    "V100": (32, False),
    "T4": (16, False),
}


def accelerator_traits(accelerator: str | None) -> tuple[float, bool]:
    """``(GPU memory in GB, BF16)`` of an accelerator type (``(0, False)`` when unknown)."""
    return _TRAITS.get((accelerator or "").upper(), (0.0, False))


@dataclass(frozen=True)
class Bundle:
    """What one rank of a gang holds on its node."""

    node: str
    cpus: float
    gpus: int
    memory_gb: float = 0.0


@dataclass(frozen=True)
class LaunchSpec:
    """A job's processes: ``argv`` (run in ``cwd`` with ``env`` added), the ``payload`` file
    the worker reads (written next to its output), the bundles and the log file."""

    job_id: str
    argv: list[str]
    env: dict[str, str]
    bundles: tuple[Bundle, ...]
    log_path: str
    payload: bytes | None = None
    cwd: str | None = None
    strategy: str = "PACK"
    attempt: int = 1

    @property
    def group_name(self) -> str:
        """``mx-job-<id>-<attempt>``: its placement group (``…-<rank>``: its actors). The
        attempt keeps a rerun's names apart from a previous attempt still being released."""
        return f"{NAME_PREFIX}{self.job_id}-{self.attempt}"


@dataclass(frozen=True)
class Outcome:
    """How a job's processes ended. ``lost``: a rank's process or node disappeared (the job may
    be run again); ``exit_code`` is the first non-zero rank's (0 when all succeeded)."""

    exit_code: int | None
    error: str | None = None
    lost: bool = False
    result: bytes | None = None
    node: str | None = None  # lost: the node whose worker disappeared, when known


class Supervisor:
    """Runs and watches one process (a Ray actor on a cluster, a plain object locally)."""

    def __init__(self, job_id: str, rank: int = 0) -> None:
        self.job_id = job_id
        self.rank = rank
        self.tmp = tempfile.mkdtemp(prefix=f"mx-job-{job_id}-{rank}-")
        self.log = os.path.join(self.tmp, "output.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.kill_at: float | None = None

    def start(
        self, argv: list[str], env: Mapping[str, str], cwd: str | None, payload: bytes | None
    ) -> int:
        """Start the process; its pid."""
        args = list(argv)
        if payload is not None:
            path = os.path.join(self.tmp, "payload.pkl")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(payload)
            args += [path, os.path.join(self.tmp, "result.pkl")]
        with open(self.log, "wb") as out:
            # Started from one long-lived thread: the parent-death signal fires when the
            # thread that forked the child ends, and a scheduler's loop thread may end first.
            self.proc = (
                _spawner()
                .submit(
                    subprocess.Popen,
                    args,
                    env={**os.environ, **env},
                    cwd=cwd or self.tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
                .result()
            )
        return self.proc.pid

    def poll(self, offset: int) -> tuple[int | None, bytes, bytes | None, str | None]:
        """``(exit status or None while running, output after offset, result, error)``;
        a process past its grace period is killed here."""
        code = self.proc.poll() if self.proc is not None else -1
        if code is None and self.kill_at is not None and time.time() >= self.kill_at:
            self._signal(signal.SIGKILL)
            code = self.proc.wait(5) if self.proc is not None else -9
        chunk = b""
        with contextlib.suppress(OSError), open(self.log, "rb") as f:
            f.seek(offset)
            chunk = f.read(_LOG_CHUNK)
        if code is None or len(chunk) == _LOG_CHUNK:
            return None if code is None else code, chunk, None, None
        result = error = None
        with contextlib.suppress(OSError), open(os.path.join(self.tmp, "result.pkl"), "rb") as f:
            result = f.read()
        with contextlib.suppress(OSError), open(os.path.join(self.tmp, "result.pkl.error")) as f:
            error = f.read()
        return code, chunk, result, error

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def terminate(self, grace_s: float) -> None:
        """SIGTERM now; SIGKILL once ``grace_s`` has passed (at a later ``poll``)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        deadline = time.time() + grace_s
        self.kill_at = deadline if self.kill_at is None else min(self.kill_at, deadline)

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # the job's whole process group

    def cleanup(self) -> None:
        """Kill what is left of the process group and delete the temporary folder."""
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


@functools.cache
def _spawner() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1, thread_name_prefix="matrixos-jobs-spawner")


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when its supervisor dies (Linux), so a killed
    scheduler or Ray worker never leaves a job's process behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Run(Protocol):
    """A started job: ``step`` advances it (pulls output into its log) and returns its
    ``Outcome`` once every rank has ended."""

    job_id: str
    running: bool  # its processes have started (the job is RUNNING, not STARTING)

    def step(self) -> Outcome | None: ...
    def terminate(self, grace_s: float) -> None: ...
    def release(self) -> None: ...  # starts releasing everything the job held
    def released(self) -> bool: ...  # finishes it (at a later step); whether it is done


class Pool(Protocol):
    """The nodes jobs run on and how to start them."""

    def nodes(self) -> list[NodeSpec]: ...
    def launch(self, spec: LaunchSpec) -> Run: ...
    def orphans(self, keep: set[str]) -> int: ...
    def suspect(self, node: str) -> None: ...  # a worker there was lost: place nothing there yet


class _Logs:
    """Appends ranks' output to the job's log file (lines prefixed by rank for gangs)."""

    def __init__(self, path: str, ranks: int) -> None:
        self.path = path
        self.ranks = ranks
        self.offsets = [0] * ranks
        self.partial = [b""] * ranks
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def add(self, rank: int, chunk: bytes) -> None:
        if not chunk:
            return
        self.offsets[rank] += len(chunk)
        if self.ranks > 1:
            data = self.partial[rank] + chunk
            lines = data.split(b"\n")
            self.partial[rank] = lines.pop()
            chunk = b"".join(b"[rank %d] %s\n" % (rank, line) for line in lines)
        with open(self.path, "ab") as f:
            f.write(chunk)

    def flush(self) -> None:
        for rank, rest in enumerate(self.partial):
            if rest:
                self.partial[rank] = b""
                with open(self.path, "ab") as f:
                    f.write(b"[rank %d] %s\n" % (rank, rest))


def _outcome(
    codes: Sequence[int], results: Sequence[bytes | None], errors: Sequence[str | None]
) -> Outcome:
    for rank, code in enumerate(codes):
        if code != 0:
            why = errors[rank] or (
                f"killed by signal {signal.Signals(-code).name}"
                if code < 0 and -code in signal.valid_signals()
                else f"exit status {code}"
            )
            prefix = f"rank {rank}: " if len(codes) > 1 else ""
            return Outcome(code, prefix + why, result=None)
    return Outcome(0, None, result=results[0] if results else None)


def _gang_env(spec: LaunchSpec, rank: int) -> dict[str, str]:
    return {
        **spec.env,
        "MATRIXOS_JOB_ID": spec.job_id,
        "MATRIXOS_JOB_RANK": str(rank),
        "MATRIXOS_JOB_WORLD_SIZE": str(len(spec.bundles)),
        "MATRIXOS_JOB_NODES": ",".join(b.node for b in spec.bundles),
    }


# -- this machine ------------------------------------------------------------------------------
class _LocalRun:
    def __init__(self, spec: LaunchSpec) -> None:
        self.job_id = spec.job_id
        self.logs = _Logs(spec.log_path, len(spec.bundles))
        self.sups = [Supervisor(spec.job_id, r) for r in range(len(spec.bundles))]
        self.ended: dict[int, tuple[int, bytes | None, str | None]] = {}
        try:
            for rank, sup in enumerate(self.sups):
                sup.start(spec.argv, _gang_env(spec, rank), spec.cwd, spec.payload)
        except BaseException:
            self.release()
            raise
        self.running = True

    def step(self) -> Outcome | None:
        for rank, sup in enumerate(self.sups):
            if rank in self.ended:
                continue
            code, chunk, result, error = sup.poll(self.logs.offsets[rank])
            self.logs.add(rank, chunk)
            if code is not None:
                self.ended[rank] = (code, result, error)
                if code != 0:  # one rank failed: the gang stops
                    for other in self.sups:
                        other.terminate(0)
        if len(self.ended) < len(self.sups):
            return None
        self.logs.flush()
        ranks = range(len(self.sups))
        return _outcome(
            [self.ended[r][0] for r in ranks],
            [self.ended[r][1] for r in ranks],
            [self.ended[r][2] for r in ranks],
        )

    def terminate(self, grace_s: float) -> None:
        for sup in self.sups:
            sup.terminate(grace_s)

    def release(self) -> None:
        for sup in self.sups:
            sup.cleanup()

    def released(self) -> bool:
        return True


class LocalPool:
    """This machine as a one-node pool: its CPUs, memory and (``nvidia-smi``) GPUs."""

    def __init__(self, cpus: float | None = None, gpus: int | None = None) -> None:
        self._cpus = float(cpus or os.cpu_count() or 1)
        self._gpus = gpus
        self._accel: str | None = None

    def nodes(self) -> list[NodeSpec]:
        if self._gpus is None:
            self._gpus, self._accel = _local_gpus()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
        gpu_mem, bf16 = accelerator_traits(self._accel)
        return [
            NodeSpec(
                id="local",
                cpus=self._cpus,
                gpus=self._gpus,
                memory_gb=mem,
                accelerator=self._accel,
                gpu_memory_gb=gpu_mem,
                bf16=bf16,
            )
        ]

    def launch(self, spec: LaunchSpec) -> Run:
        return _LocalRun(spec)

    def orphans(self, keep: set[str]) -> int:
        return 0  # a local job's processes end with the process that started them

    def suspect(self, node: str) -> None:
        pass  # this machine is the only node: a lost process says nothing about it


def _local_gpus() -> tuple[int, str | None]:
    names = nvidia_smi("name", timeout=10) or []
    accel = None
    if names:
        accel = next((k for k in _TRAITS if k in names[0].upper().replace(" ", "")), None)
    return len(names), accel


# -- Ray ---------------------------------------------------------------------------------------
@dataclass
class _RayRun:
    """A gang on Ray. Nothing here blocks the scheduler: placing, starting, polling and
    releasing each send their calls and look for the answers at the next ``step``."""

    spec: LaunchSpec
    ips: dict[str, str]
    place_timeout_s: float
    job_id: str = ""
    running: bool = False
    pg: Any = None
    ready: Any = None
    actors: list[Any] = field(default_factory=list)
    placed_at: float = 0.0
    starting: list[Any] | None = None
    polls: dict[int, Any] = field(default_factory=dict)  # rank -> its pending poll
    ended: dict[int, tuple[int, bytes | None, str | None]] = field(default_factory=dict)
    logs: _Logs | None = None
    closing: list[Any] | None = None
    closing_since: float = 0.0

    def __post_init__(self) -> None:
        from ray.util.placement_group import placement_group

        self.job_id = self.spec.job_id
        self.logs = _Logs(self.spec.log_path, len(self.spec.bundles))
        bundles = []
        for b in self.spec.bundles:
            res: dict[str, float] = {"CPU": b.cpus} if b.cpus else {}
            if b.gpus:
                res["GPU"] = float(b.gpus)
            if b.memory_gb:
                res["memory"] = float(int(b.memory_gb * 1e9))
            ip = self.ips.get(b.node)
            if ip:
                res[f"node:{ip}"] = 0.001  # the node the policy chose
            bundles.append(res)
        self.pg = placement_group(bundles, strategy=self.spec.strategy, name=self.spec.group_name)
        self.ready = self.pg.ready()
        self.placed_at = time.time()

    def _start(self) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        actor = ray.remote(Supervisor)
        for rank, b in enumerate(self.spec.bundles):
            a = actor.options(  # type: ignore[attr-defined]
                name=f"{self.spec.group_name}-{rank}",
                namespace=_NAMESPACE,
                num_cpus=b.cpus,
                num_gpus=b.gpus,
                max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=rank
                ),
            ).remote(self.job_id, rank)
            self.actors.append(a)
        self.starting = [
            a.start.remote(
                self.spec.argv, _gang_env(self.spec, r), self.spec.cwd, self.spec.payload
            )
            for r, a in enumerate(self.actors)
        ]

    def _placing(self) -> Outcome | None:
        """Place and start the gang; an outcome when that failed."""
        import ray
        from ray.exceptions import RayActorError

        waited = time.time() - self.placed_at
        if self.starting is None:
            done, _ = ray.wait([self.ready], timeout=0)
            if not done:
                if waited > self.place_timeout_s:
                    why = f"the placement group was not placed within {self.place_timeout_s:.0f} s"
                    return Outcome(None, why, lost=True)
                return None
            self._start()
        assert self.starting is not None
        done, _ = ray.wait(self.starting, num_returns=len(self.starting), timeout=0)
        if len(done) < len(self.starting):
            if waited > self.place_timeout_s + 120:
                return Outcome(None, "its workers did not start within 120 s", lost=True)
            return None
        try:
            ray.get(self.starting)
        except RayActorError as e:
            return Outcome(None, f"a worker did not start: {_one_line(e)}", lost=True)
        except Exception as e:  # a broken entry or environment: not worth retrying
            return Outcome(None, f"the job's processes did not start: {_one_line(e)}")
        self.running = True
        return None

    def step(self) -> Outcome | None:
        import ray
        from ray.exceptions import RayActorError

        if not self.running:
            failed = self._placing()
            if failed is not None or not self.running:
                return failed
        assert self.logs is not None
        for rank, a in enumerate(self.actors):
            if rank not in self.ended and rank not in self.polls:
                self.polls[rank] = a.poll.remote(self.logs.offsets[rank])
        ready, _ = ray.wait(list(self.polls.values()), num_returns=len(self.polls), timeout=0)
        answered = {ref.hex() for ref in ready}
        for rank, ref in list(self.polls.items()):
            if ref.hex() not in answered:
                continue
            del self.polls[rank]
            try:
                code, chunk, result, error = ray.get(ref)
            except RayActorError as e:
                self.terminate(0)
                node = self.spec.bundles[rank].node
                why = f"rank {rank}'s worker on node {node[:12]} was lost: {_one_line(e)}"
                return Outcome(None, why, lost=True, node=node)
            self.logs.add(rank, chunk)
            if code is not None:
                self.ended[rank] = (code, result, error)
                if code != 0:
                    self.terminate(0)
        if len(self.ended) < len(self.actors):
            return None
        self.logs.flush()
        ranks = range(len(self.actors))
        return _outcome(
            [self.ended[r][0] for r in ranks],
            [self.ended[r][1] for r in ranks],
            [self.ended[r][2] for r in ranks],
        )

    def terminate(self, grace_s: float) -> None:
        for a in self.actors:
            with contextlib.suppress(Exception):
                a.terminate.remote(grace_s)

    def release(self) -> None:
        """Ask every supervisor to kill what is left and delete its folder, then exit."""
        self.closing = []
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.closing.append(a.cleanup.remote())
                a.__ray_terminate__.remote()
        self.closing_since = time.time()

    def released(self) -> bool:
        """Finish ``release``: once the supervisors are done (or after 10 s), kill them and
        remove the placement group. Whether it is all gone."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if self.closing is None:
            self.release()
        assert self.closing is not None
        done, _ = ray.wait(self.closing, num_returns=len(self.closing), timeout=0)
        if len(done) < len(self.closing) and time.time() - self.closing_since < 10:
            return False
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        with contextlib.suppress(Exception):
            remove_placement_group(self.pg)
        return True


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class RayPool:
    """The Ray cluster this process is connected to.

    A node where a job's worker was lost (``suspect``) is left out of ``nodes`` until the
    cluster reports it dead or ``suspect_s`` has passed: a node that died is still listed alive
    until Ray's health checks miss it (some seconds), and a gang requeued meanwhile would be
    pinned to it again and wait there."""

    def __init__(self, place_timeout_s: float = 120.0, suspect_s: float = 30.0) -> None:
        self.place_timeout_s = place_timeout_s
        self.suspect_s = suspect_s
        self._ips: dict[str, str] = {}
        self._suspects: dict[str, float] = {}  # node id -> until when it is left out

    def suspect(self, node: str) -> None:
        self._suspects[node] = time.monotonic() + self.suspect_s

    def nodes(self) -> list[NodeSpec]:
        import ray

        out = []
        now = time.monotonic()
        for n in ray.nodes():
            if not n.get("Alive"):
                self._suspects.pop(n["NodeID"], None)
                continue
            if self._suspects.get(n["NodeID"], 0.0) > now:
                continue
            res: dict[str, float] = n.get("Resources") or {}
            labels: dict[str, str] = n.get("Labels") or {}
            accel = labels.get("ray.io/accelerator-type") or next(
                (k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")), None
            )
            gpu_mem, bf16 = accelerator_traits(accel)
            self._ips[n["NodeID"]] = n.get("NodeManagerAddress", "")
            out.append(
                NodeSpec(
                    id=n["NodeID"],
                    cpus=float(res.get("CPU", 0)),
                    gpus=int(res.get("GPU", 0)),
                    memory_gb=float(res.get("memory", 0)) / 1e9,
                    accelerator=accel,
                    gpu_memory_gb=gpu_mem,
                    bf16=bf16,
                )
            )
        out.sort(key=lambda s: self._ips.get(s.id, ""))
        return out

    def launch(self, spec: LaunchSpec) -> Run:
        if not self._ips:
            self.nodes()
        return _RayRun(spec, dict(self._ips), self.place_timeout_s)

    def orphans(self, keep: set[str]) -> int:
        """Remove ``mx-job-`` placement groups and actors of jobs not in ``keep``; how many."""
        import ray
        from ray.util.placement_group import PlacementGroup, remove_placement_group

        removed = 0
        for pg_id, info in ray.util.placement_group_table().items():
            name = info.get("name") or ""
            if not name.startswith(NAME_PREFIX) or info.get("state") == "REMOVED":
                continue
            if job_of(name) in keep:
                continue
            with contextlib.suppress(Exception):
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
                removed += 1
        for name in live_job_actors():
            if job_of(name) in keep:
                continue
            with contextlib.suppress(Exception):
                ray.kill(ray.get_actor(name, namespace=_NAMESPACE), no_restart=True)
                removed += 1
        return removed


def job_of(name: str) -> str:
    """The job id in a placement group's or actor's ``mx-job-`` name."""
    return name[len(NAME_PREFIX) :].split("-", 1)[0]


def live_job_actors() -> list[str]:
    """Names of the ``mx-job-`` actors that are not dead (from the cluster's GCS)."""
    from ray._private.state import actors

    out = []
    for info in actors().values():
        name = info.get("Name") or ""
        if name.startswith(NAME_PREFIX) and info.get("State") != "DEAD":
            out.append(name)
    return out


def live_job_groups() -> list[str]:
    """Names of the ``mx-job-`` placement groups that are not removed."""
    import ray

    return [
        info["name"]
        for info in ray.util.placement_group_table().values()
        if (info.get("name") or "").startswith(NAME_PREFIX) and info.get("state") != "REMOVED"
    ]


def python_argv() -> list[str]:
    """The command a Python or SQL job's worker runs (its payload and result paths follow):
    the worker's source as ``python -c``, so that a Python job's process imports neither
    ``matrixos`` nor anything else it does not need (a SQL job's imports ``matrixos``)."""
    return [sys.executable, "-c", (Path(__file__).parent / "_worker.py").read_text()]
