"""docker/: the compose file is valid Compose (JSON schema of the Compose Specification, see
README.md here) and coherent (references resolve, secrets never literal, loopback ports, a GPU
reservation), and the Dockerfile passes hadolint. No docker daemon is needed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
SCHEMA = Path(__file__).with_name("compose-spec.json")
HADOLINT = Path(sys.executable).with_name("hadolint")
SECRET_WORDS = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", re.I)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.Draft7Validator, doc: Any) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_file_matches_the_compose_specification(
    compose: dict[str, Any], validator: jsonschema.Draft7Validator
) -> None:
    assert not _errors(validator, compose)
    # Each service, network, volume and secret on its own against its definition.
    defs = {
        "services": "service",
        "networks": "network",
        "volumes": "volume",
        "secrets": "secret",
    }
    checked = 0
    for section, definition in defs.items():
        sub = jsonschema.Draft7Validator(
            {**validator.schema, "$ref": f"#/definitions/{definition}"}
        )
        for name, entry in (compose.get(section) or {}).items():
            errors = _errors(sub, entry if entry is not None else {})
            assert not errors, f"{section}.{name}: {errors}"
            checked += 1
    assert checked >= 15


def test_the_schema_check_catches_mistakes(
    compose: dict[str, Any], validator: jsonschema.Draft7Validator
) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["serve"]["healthcheck"]["interval"] = 10  # must be a duration string
    broken["services"]["serve"]["depends_on"]["postgres"]["condition"] = "service_ready"
    broken["services"]["ray-worker"]["deploy"]["replicas"] = {"count": 2}
    broken["services"]["minio"]["volumme"] = []
    paths = "\n".join(_errors(validator, broken))
    for where in ("serve", "ray-worker", "minio"):
        assert where in paths


def test_the_topology_is_complete(compose: dict[str, Any]) -> None:
    services = compose["services"]
    roles = {s["labels"]["io.matrixos.role"]: name for name, s in services.items()}
    for role in ("s3", "catalog-db", "mqtt", "ray-head", "ray-worker", "ray-gpu-worker", "server"):
        assert role in roles, f"no service with io.matrixos.role={role}"
    assert services[roles["ray-worker"]]["deploy"]["replicas"] >= 2
    gpu = services[roles["ray-gpu-worker"]]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["build"]["target"] == "gpu"
    server = services[roles["server"]]
    script = " ".join(server["command"])
    assert "matrixos serve" in script and "--mqtt" in script and "--pg-port" in script
    # the server's Ray driver runs on a node of the cluster: its container joins first
    assert script.index("compute start --address ray-head") < script.index("matrixos serve")


def test_references_resolve(compose: dict[str, Any]) -> None:
    services = compose["services"]
    secrets = compose.get("secrets") or {}
    volumes = compose.get("volumes") or {}
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep}'s health check"
        for secret in svc.get("secrets") or []:
            assert secret in secrets, f"{name} uses unknown secret {secret}"
        for mount in svc.get("volumes") or []:
            source = mount.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in volumes, f"{name} mounts unknown volume {source}"
        # a *_FILE variable points at a secret the service has
        for key, value in (svc.get("environment") or {}).items():
            if key.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                assert value.rsplit("/", 1)[1] in (svc.get("secrets") or []), (name, key)
        # long-running services say whether they are healthy
        if svc.get("restart") == "unless-stopped":
            assert "healthcheck" in svc, f"{name} has no health check"
    for name, secret in secrets.items():
        assert "file" in secret or "environment" in secret, name
        assert "content" not in secret, f"secret {name} is written into the compose file"


def test_no_secret_is_a_literal_and_ports_are_loopback(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_WORDS.search(key) and not key.endswith(("_FILE", "_PATH", "_MODE")):
                pytest.fail(f"{name}: {key} is set in the compose file; use a secret file")
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", str(value)), f"{name}: {key}"
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(ROOT / "docker" / ".hadolint.yaml"), "-"],
        input=(ROOT / "docker" / "Dockerfile").read_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and it does find problems: an unpinned base image and a root user are reported
    bad = "FROM python:latest\nRUN apt-get install -y curl\n"
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.M)
    assert stages == ["build", "runtime", "gpu"]
    assert re.search(r"PYTHON_IMAGE=python:[\d.]+-slim-", text)
    assert re.search(r"CUDA_IMAGE=nvidia/cuda:[\d.]+-", text)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert len(users) == 2 and all(not u.startswith(("root", "0")) for u in users)
    assert not SECRET_WORDS.search(re.sub(r"#.*", "", text).replace("NAME_FILE", ""))
    torch_pin = re.search(r'"torch==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert torch_pin and "ml]" in text  # the GPU image installs the pinned torch extra


def test_cluster_up_reads_its_topology_from_the_compose_file(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    from matrixos.cluster.topology import read_topology

    topo = read_topology(COMPOSE)
    assert (topo.workers, topo.worker_cpus, topo.head_cpus) == (2, 2, 2)
    assert (topo.gpu_workers, topo.gpus_per_worker, topo.accelerator) == (1, 1, "L4")
    assert (topo.bucket, topo.prefix, topo.mqtt) == ("warehouse", "wh", True)
    assert topo.serve_options == ["--workers", "8", "--route", "sensors/#=iot.readings"]
    # a change to the compose file is a change to what `cluster up` starts
    changed = json.loads(json.dumps(compose))
    changed["services"]["ray-worker"]["deploy"]["replicas"] = 3
    changed["services"]["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0][
        "count"
    ] = 2
    changed["services"]["serve"]["environment"]["MATRIXOS_WAREHOUSE"] = "s3://lake/prod"
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(changed))
    topo = read_topology(path)
    assert (topo.workers, topo.gpus_per_worker, topo.bucket, topo.prefix) == (3, 2, "lake", "prod")


def test_cluster_commands_without_a_cluster(tmp_path: Path) -> None:
    from matrixos.cluster.launcher import cluster_down, cluster_status
    from matrixos.cluster.topology import read_topology
    from matrixos.errors import ConfigError

    assert cluster_status(tmp_path) == {"running": False, "processes": {}}
    assert cluster_down(tmp_path) == []
    with pytest.raises(ConfigError, match="no service labelled"):
        (tmp_path / "c.yaml").write_text("services:\n  x:\n    image: busybox\n")
        read_topology(tmp_path / "c.yaml")
