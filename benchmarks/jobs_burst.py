"""``python -m benchmarks.jobs_burst [--jobs 1000] [--cpus 0.25] [--address HOST:PORT]``

A burst of short jobs on a Ray cluster: ``--jobs`` Python jobs submitted at once through
``lh.jobs.submit`` (each appends its name to a file and returns), then waited for. Reports the
submit time, the time until all ended, jobs per second, each job's run count (every job must run
exactly once: its name appears once in the file) and the ``mx-job-`` placement groups and actors
left afterwards (must be 0).

Without ``--address`` it starts the tests' 3-node loopback cluster (``tests/compute/conftest.py``:
one CPU per node, node c with one GPU) and stops it at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import matrixos as mx
from matrixos.compute import node_env
from matrixos.jobs.runner import job_of, live_job_actors, live_job_groups
from matrixos.jobs.wiring import open_jobs

ROOT = Path(__file__).resolve().parents[1]


def mark(path: str, name: str) -> str:
    """The job: append ``name`` to ``path``."""
    with open(path, "a") as f:
        f.write(name + "\n")
    return name


def _test_cluster() -> Any:
    """The tests' cluster module (``tests/compute/conftest.py``), loaded by path."""
    sys.path.insert(0, str(ROOT / "tests" / "compute"))
    spec = importlib.util.spec_from_file_location(
        "_cluster_conftest", ROOT / "tests/compute/conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(address: str, jobs: int, cpus: float, work: Path) -> dict[str, Any]:
    out = work / "marks.txt"
    with mx.connect(str(work / "wh"), compute=address) as lh:
        svc = open_jobs(
            lh.service,
            ray=lh.compute.is_ray,
            connect={"warehouse": str(work / "wh")},
            tick_s=0.2,
            grace_s=1.0,
        )
        try:
            api = svc.for_principal(lh.principal)
            t0 = time.perf_counter()
            handles = [api.submit(mark, str(out), f"j{i}", cpus=cpus) for i in range(jobs)]
            submitted = time.perf_counter() - t0
            states = Counter(h.wait(3600) for h in handles)
            done = time.perf_counter() - t0
            time.sleep(2)
            ids = {h.id for h in handles}
            left = [n for n in live_job_groups() + live_job_actors() if job_of(n) in ids]
            attempts = Counter(r.attempts for r in svc.store.list())
        finally:
            svc.close()
    runs = Counter(out.read_text().split()) if out.exists() else Counter()
    return {
        "jobs": jobs,
        "cpus_per_job": cpus,
        "submit_s": round(submitted, 2),
        "all_ended_s": round(done, 1),
        "jobs_per_s": round(jobs / done, 2),
        "states": dict(states),
        "attempts": dict(attempts),
        "ran_exactly_once": sum(1 for i in range(jobs) if runs[f"j{i}"] == 1),
        "ran_more_than_once": sum(1 for n in runs.values() if n > 1),
        "never_ran": sum(1 for i in range(jobs) if runs[f"j{i}"] == 0),
        "leaked_groups_and_actors": len(left),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--cpus", type=float, default=0.25, help="CPUs per job")
    ap.add_argument("--address", help="a running cluster's GCS address (host:port)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mx-jobs-burst-"))
    os.environ.setdefault("MATRIXOS_HOME", str(work / "home"))
    cluster: Any = None
    conftest: Any = None
    address = args.address
    if address is None:
        conftest = _test_cluster()
        cluster = conftest._start_cluster()
        os.environ.update(node_env(cluster.token_file))
        address = cluster.address
    try:
        result = run(address, args.jobs, args.cpus, work)
    finally:
        if cluster is not None:
            conftest._stop_nodes(cluster.nodes)
            shutil.rmtree(cluster.root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    result["cluster"] = "3-node loopback (1 CPU each)" if cluster is not None else address
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
