"""Object-store failures reach the user as one ``StorageError`` naming what, where and why.

Missing credentials, a missing bucket and an endpoint that accepts connections but never
answers, on the moto S3 server (and a silent socket started here), through Delta and Lance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.errors import StorageError

try:
    from tests._servers import S3Server, free_port
except ModuleNotFoundError:
    from _servers import S3Server, free_port  # type: ignore[no-redef]

FORMATS = ["delta", "lance"]
_CLI = [sys.executable, "-m", "matrixos.cli"]


@pytest.fixture
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials from the environment, files or an instance-metadata service: the
    metadata endpoints point at a closed loopback port, so every machine fails the same way."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", closed)  # object_store (delta-rs)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", closed)  # aws-config (lance)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An S3 endpoint on loopback that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed below
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def _short_limits() -> dict[str, float]:
    return {
        "storage_connect_timeout": 0.3,
        "storage_request_timeout": 0.3,
        "storage_max_retries": 0,
        "storage_retry_timeout": 0.5,
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_credentials(
    s3_server: S3Server, no_ambient_credentials: None, tmp_path: Path, fmt: str
) -> None:
    bucket = s3_server.make_bucket()
    options = {
        k: v
        for k, v in s3_server.storage_options.items()
        if "KEY" not in k  # no credentials
    }
    with mx.connect(
        f"s3://{bucket}/wh", storage_options=options, catalog_url=f"sqlite:///{tmp_path}/c.db"
    ) as lh:
        with pytest.raises(StorageError) as err:
            lh.create_table("raw.events", pa.table({"id": [1]}), format=fmt)
        assert lh.tables() == []  # nothing half-created
    e = err.value
    assert e.bucket == bucket and e.endpoint == s3_server.endpoint_url
    assert "no S3 credentials" in e.message and s3_server.endpoint_url in e.message
    assert e.hint is not None and "AWS_ACCESS_KEY_ID" in e.hint
    assert "\x1b[" not in str(e) and ".rs:" not in str(e)  # no colour codes, no Rust sources


def test_missing_credentials_with_the_catalog_in_the_bucket(
    s3_server: S3Server, no_ambient_credentials: None
) -> None:
    """The default catalog of an s3:// warehouse is its first request: the same error."""
    bucket = s3_server.make_bucket()
    options = {k: v for k, v in s3_server.storage_options.items() if "KEY" not in k}
    with (
        pytest.raises(StorageError, match="no S3 credentials were found") as err,
        mx.connect(f"s3://{bucket}/wh", storage_options=options) as lh,
    ):
        lh.create_table("raw.events", pa.table({"id": [1]}))
    assert err.value.bucket == bucket and err.value.endpoint == s3_server.endpoint_url


def test_reading_sources_without_credentials(
    s3_server: S3Server, no_ambient_credentials: None, tmp_path: Path
) -> None:
    """Files to ingest or index on S3: s3fs/botocore's own errors become StorageError too."""
    bucket = s3_server.make_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="in/e.csv", Body=b"id\n1\n")
    options = {k: v for k, v in s3_server.storage_options.items() if "KEY" not in k}
    with mx.connect(str(tmp_path / "wh"), storage_options=options) as lh:
        for call in (
            lambda: lh.ingest(f"s3://{bucket}/in/e.csv", "raw.events"),
            lambda: lh.ingest_media(f"s3://{bucket}/in/", "raw.files"),
            lambda: lh.rag.index(f"s3://{bucket}/in/", "kb.chunks", embedder="hash"),
        ):
            with pytest.raises(StorageError, match="no S3 credentials were found") as err:
                call()
            assert err.value.bucket == bucket and err.value.endpoint == s3_server.endpoint_url
        assert lh.tables() == []


@pytest.fixture(scope="module")
def checking_s3() -> Iterator[S3Server]:
    """A moto server that checks signatures: it knows no access key, so every one is wrong."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # read by the moto child at start
        server = S3Server()
        server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_credentials(checking_s3: S3Server, tmp_path: Path, fmt: str) -> None:
    options = {**checking_s3.storage_options, "AWS_ACCESS_KEY_ID": "AKIAWRONG"}
    with (
        mx.connect(
            "s3://bucket/wh",
            storage_options=options,
            catalog_url=f"sqlite:///{tmp_path}/c.db",
            storage_max_retries=0,
        ) as lh,
        pytest.raises(StorageError, match="the endpoint refused the credentials") as err,
    ):
        lh.create_table("raw.events", pa.table({"id": [1]}), format=fmt)
    assert err.value.endpoint == checking_s3.endpoint_url and err.value.bucket == "bucket"
    assert err.value.hint is not None and "AWS_SECRET_ACCESS_KEY" in err.value.hint
    assert err.value.detail is not None and "403" in err.value.detail


def test_missing_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    with (
        mx.connect(
            "s3://no-such-bucket-here/wh",
            storage_options=s3_server.storage_options,
            catalog_url=f"sqlite:///{tmp_path}/c.db",
            storage_max_retries=0,
        ) as lh,
        pytest.raises(StorageError, match="bucket does not exist") as err,
    ):
        lh.create_table("raw.events", pa.table({"id": [1]}))  # lance retries this for seconds
    assert err.value.bucket == "no-such-bucket-here"
    assert err.value.hint is not None and "create the bucket" in err.value.hint


@pytest.mark.parametrize("fmt", FORMATS)
def test_silent_endpoint_fails_within_the_configured_limits(
    silent_endpoint: str, tmp_path: Path, fmt: str
) -> None:
    options = {
        "AWS_ENDPOINT_URL": silent_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
    }
    # object_store's default of 10 retries over 3 minutes would hold this for minutes
    with (
        mx.connect(
            "s3://stalled/wh",
            storage_options=options,
            catalog_url=f"sqlite:///{tmp_path}/c.db",
            **_short_limits(),
        ) as lh,
        pytest.raises(StorageError) as err,
    ):
        lh.create_table("raw.events", pa.table({"id": [1]}), format=fmt)
    e = err.value
    assert e.endpoint == silent_endpoint and e.bucket == "stalled"
    assert "did not answer" in e.message
    assert e.hint is not None and "MATRIXOS_STORAGE_REQUEST_TIMEOUT" in e.hint


def test_cli_reports_storage_errors_without_rust_logs(silent_endpoint: str, tmp_path: Path) -> None:
    """The CLI says `error: …` (not "internal error"), and no Rust log line reaches stderr."""
    data = tmp_path / "e.csv"
    data.write_text("id\n1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MATRIXOS_"))}
    env.update(
        AWS_ENDPOINT_URL=silent_endpoint,
        AWS_ACCESS_KEY_ID="k",
        AWS_SECRET_ACCESS_KEY="s",
        AWS_REGION="us-east-1",
        MATRIXOS_HOME=str(tmp_path / "home"),
        MATRIXOS_CATALOG_URL=f"sqlite:///{tmp_path}/c.db",
        **{f"MATRIXOS_{k.upper()}": str(v) for k, v in _short_limits().items()},
    )
    p = subprocess.run(
        [*_CLI, "--warehouse", "s3://stalled/wh", "ingest", str(data), "-t", "raw.events"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 1, p.stderr
    assert "error:" in p.stderr and "did not answer" in p.stderr
    assert silent_endpoint in p.stderr
    assert "internal error" not in p.stderr and "Traceback" not in p.stderr
    assert " WARN " not in p.stderr and " ERROR " not in p.stderr


def test_rust_logs_show_errors_only_unless_asked() -> None:
    code = "import os, matrixos.storage; print(os.environ['RUST_LOG'], os.environ['LANCE_LOG'])"
    env = {k: v for k, v in os.environ.items() if k not in ("RUST_LOG", "LANCE_LOG")}
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert quiet.stdout.split() == ["error", "error"]
    env["LANCE_LOG"] = "debug"  # asked for: kept
    loud = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert loud.stdout.split() == ["error", "debug"]
