"""Real services as local processes: an S3 server (moto, MinIO's stand-in) and a PostgreSQL
server, for ``matrixos cluster up`` (the docker/compose.yaml topology without docker), the tests
and the benchmarks.

Plain classes with ``start()`` / ``stop()`` (and context-manager support), so the cluster
launcher, the pytest fixtures in ``tests/conftest.py`` and the benchmarks share one
implementation. Every server binds
127.0.0.1 on a port picked at runtime and keeps its files in its own temporary folder, so
several pytest-xdist workers (or a benchmark beside a test run) never collide.

Example::

    with S3Server() as s3, PostgresServer() as pg:
        uri = f"s3://{s3.make_bucket()}/wh"
        catalog = pg.url(pg.create_database())
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from matrixos._ports import free_port
from matrixos.errors import MatrixOSError

__all__ = [
    "LOCALHOST",
    "PostgresServer",
    "PostgresUnavailable",
    "S3Server",
    "ServiceError",
    "WarehouseTarget",
    "find_postgres_bin",
    "free_port",
    "unique_name",
]

LOCALHOST = "127.0.0.1"


def unique_name(prefix: str) -> str:
    """Return ``prefix`` plus 12 random hex digits: valid as a bucket and a database name."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class WarehouseTarget:
    """Where a test's warehouse lives: a local folder or an ``s3://`` prefix.

    ``storage_options`` is None for local folders and deltalake-style ``AWS_*`` keys for S3.
    """

    uri: str
    storage_options: dict[str, str] | None
    kind: str


class ServiceError(MatrixOSError, RuntimeError):
    """A local service (S3, PostgreSQL, a cluster process) did not start or stop."""


class _Server:
    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------- S3


_MOTO_CHILD = """
import logging, sys
# moto checks If-None-Match and stores the object in two steps; serialize PUTs so conditional
# commits are atomic as on real S3 (otherwise two Delta writers can both win one version).
import threading
from moto.s3.responses import S3Response
_lock = threading.Lock()
def _serialized(orig):
    def handler(self, *args, **kwargs):
        with _lock:
            return orig(self, *args, **kwargs)
    return handler
for _name in ("put_object", "_key_response_post"):
    setattr(S3Response, _name, _serialized(getattr(S3Response, _name)))
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
server = ThreadedMotoServer(ip_address=sys.argv[1], port=port, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
if len(sys.argv) > 3:  # detached: runs until SIGTERM
    import signal
    import os
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        signal.pause()
sys.stdin.read()
server.stop()
"""


class S3Server(_Server):
    """moto's ThreadedMotoServer in a child process, on 127.0.0.1 and a free port.

    The fake credentials are passed explicitly everywhere; nothing is put in ``os.environ``.
    Buckets live in moto's process-wide state, so use :meth:`make_bucket` (unique names) per test.
    """

    region = "us-east-1"
    access_key_id = "testing"
    secret_access_key = "testing"

    def __init__(self) -> None:
        self._server: subprocess.Popen[str] | None = None
        self.host = LOCALHOST
        self.port = 0

    @classmethod
    def start_detached(cls, log: str | os.PathLike[str]) -> tuple[Self, int]:
        """Start a server that outlives this process (its own session, stopped by SIGTERM to
        the returned process id); return it and that id."""
        server = cls()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _MOTO_CHILD, LOCALHOST, "0", "detached"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=out,
                start_new_session=True,
            )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        proc.stdout.close()
        if not line.isdigit():
            proc.kill()
            raise ServiceError(f"moto server failed to start: {line!r} (log: {log})")
        server.port = int(line)
        return server, proc.pid

    def start(self) -> None:
        # moto runs in a child process: delta-rs and lance make blocking S3 calls that may hold
        # the GIL, which would starve an in-process server thread (a deadlock until timeout).
        self._server = subprocess.Popen(
            [sys.executable, "-c", _MOTO_CHILD, LOCALHOST],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._server.stdout is not None
        line = self._server.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise ServiceError(f"moto server failed to start: {line!r}")
        self.port = int(line)

    def stop(self) -> None:
        if self._server is not None:
            proc, self._server = self._server, None
            if proc.stdin:
                proc.stdin.close()  # the child exits when its stdin closes
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def storage_options(self) -> dict[str, str]:
        """deltalake / object_store keys (a fresh dict each time: callers may change it)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_ALLOW_HTTP": "true",
        }

    @property
    def fsspec_options(self) -> dict[str, Any]:
        """The same server as s3fs keyword arguments."""
        return {
            "key": self.access_key_id,
            "secret": self.secret_access_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": self.region},
        }

    def client(self) -> Any:
        """A boto3 S3 client for this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def make_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name when ``name`` is None) and return its name."""
        bucket = name or unique_name("mx-")
        self.client().create_bucket(Bucket=bucket)
        return bucket


# --------------------------------------------------------------------------------- Postgres


class PostgresUnavailable(ServiceError):
    """The PostgreSQL server binaries are not installed."""


class _CommandFailed(ServiceError):
    pass


def find_postgres_bin() -> Path:
    """Return the ``bin`` folder of the newest installed PostgreSQL server.

    Debian keeps ``initdb``/``pg_ctl``/``postgres`` off ``PATH`` under
    ``/usr/lib/postgresql/<version>/bin``; other systems put them on ``PATH``.
    """

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for folder in candidates:
        if all((Path(folder) / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin "
        "or on PATH; run `./dev setup` as root or `apt-get install postgresql`."
    )


def _proc_state(pid: int) -> str | None:
    """The process's state letter from ``/proc`` (``None``: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else None


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as exited: it runs nothing any more)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it happens to be our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    state = _proc_state(pid)
    return state is None or state in ("Z", "X")


def _wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` seconds for ``pid`` to exit; whether it did."""
    deadline = time.monotonic() + timeout_s
    while not process_gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _is_postgres(pid: int) -> bool:
    """Whether ``pid`` is still a PostgreSQL server process (not a reused pid)."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return not process_gone(pid)  # no /proc: trust the pid file
    return comm.startswith(("postgres", "postmaster"))


class PostgresServer(_Server):
    """A throwaway PostgreSQL cluster: trust auth, 127.0.0.1 only, a free port.

    The cluster lives in a fresh temporary folder (the socket too) that :meth:`stop` removes.
    PostgreSQL refuses to run as root, so when this process is root the cluster is owned by,
    and every server command runs as, the ``postgres`` system user (created if missing).
    """

    superuser = "postgres"
    os_user = "postgres"

    def __init__(self, base_dir: str | os.PathLike[str] | None = None) -> None:
        self._base_dir = base_dir
        self.bin = find_postgres_bin()
        self.host = LOCALHOST
        self.port = 0
        self.root: Path | None = None
        self._as_root = os.geteuid() == 0

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "call start() first"
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        assert self.root is not None, "call start() first"
        return self.root / "postgres.log"

    def start(self) -> None:
        # As root, the folder must be reachable by the postgres user: pytest's own temp folders
        # are 0700 root, so use a short folder straight under the system temp dir instead
        # (short also keeps the unix socket path under its 107-byte limit).
        base = None if self._as_root else self._base_dir
        self.root = Path(tempfile.mkdtemp(prefix="mx-pg-", dir=base))
        sockets = self.root / "sock"
        sockets.mkdir()
        if self._as_root:
            user = self._ensure_os_user()
            for path in (self.root, sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            )
            self._start_server(sockets)
        except BaseException:
            self._cleanup()
            raise

    def _start_server(self, sockets: Path) -> None:
        # The port is free when picked but another process may take it before postgres binds:
        # retry with a new one instead of failing the session.
        last_error: _CommandFailed | None = None
        for _ in range(5):
            self.port = free_port(self.host)
            options = " ".join(
                [
                    f"-p {self.port}",
                    f"-c listen_addresses={self.host}",
                    f"-c unix_socket_directories={sockets}",
                    # A test cluster need not survive a crash: skip the disk flushes.
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                    "-c shared_buffers=32MB",
                    "-c max_connections=200",
                ]
            )
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
                return
            except _CommandFailed as e:
                last_error = e
                if "could not bind" not in self._log_tail():
                    break
        raise ServiceError(
            f"PostgreSQL did not start: {last_error}\n--- {self.log_file} ---\n{self._log_tail()}"
        ) from last_error

    @classmethod
    def attach(cls, root: str | os.PathLike[str], port: int) -> PostgresServer:
        """The server of a cluster folder started earlier (by another process), to stop it."""
        server = cls()
        server.root, server.port = Path(root), port
        return server

    def postmaster_pid(self) -> int | None:
        """The server's process id while it runs."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the server and remove its folder; return only once the postmaster has exited.

        ``pg_ctl stop -m fast -w`` first; when it fails or times out (a heavily loaded machine),
        SIGTERM then SIGKILL to the postmaster, waiting for it to be gone each time. ``pg_ctl``
        itself only waits for ``postmaster.pid`` to vanish, which the postmaster removes just
        before it exits, so its process is waited for here as well.
        """
        if self.root is None:
            return
        pid = self.postmaster_pid()
        if (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(_CommandFailed):
                self._run(
                    "pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w",
                    "-t", str(max(1, int(timeout_s))), "stop",
                )  # fmt: skip
        if pid is not None and not _wait_exit(pid, 10.0):
            for sig, wait_s in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 20.0)):
                if _is_postgres(pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)
                if _wait_exit(pid, wait_s):
                    break
            else:
                raise ServiceError(f"PostgreSQL postmaster {pid} did not exit after SIGKILL")
        self._cleanup()

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL (psycopg 3 driver) of database ``dbname``."""
        return f"postgresql+psycopg://{self.superuser}@{self.host}:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq URL of database ``dbname``, for psycopg.connect() or psql."""
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create a database (a unique name when ``name`` is None) and return its name."""
        import psycopg
        from psycopg import sql

        dbname = name or unique_name("mx_")
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        return dbname

    # -- helpers

    def _ensure_os_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.os_user)
        except KeyError:
            command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
            subprocess.run([*command, self.os_user], check=True, capture_output=True)
            return pwd.getpwnam(self.os_user)

    def _run(self, tool: str, *args: str) -> None:
        assert self.root is not None
        kwargs: dict[str, Any] = {}
        if self._as_root:
            # subprocess drops to the user itself (setgroups/setgid/setuid in the child), so
            # neither runuser nor sudo is needed.
            kwargs = {"user": self.os_user, "group": self.os_user, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "PGTZ": "UTC"}
        proc = subprocess.run(
            [str(self.bin / tool), *args],
            cwd=self.root,  # a folder the postgres user can enter
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )
        if proc.returncode != 0:
            raise _CommandFailed(f"{tool} exited {proc.returncode}: {proc.stderr.strip()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
