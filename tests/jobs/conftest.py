"""The jobs tests share the compute tests' 3-node loopback Ray cluster (``ray_cluster``,
``ray_pool`` of ``tests/compute/conftest.py``: one cluster per test run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_COMPUTE = Path(__file__).resolve().parents[1] / "compute"
if str(_COMPUTE) not in sys.path:
    sys.path.insert(0, str(_COMPUTE))  # its conftest imports ``_cluster`` from there
_spec = importlib.util.spec_from_file_location("_compute_conftest", _COMPUTE / "conftest.py")
assert _spec is not None and _spec.loader is not None
_compute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_compute)

ray_cluster = _compute.ray_cluster
ray_pool = _compute.ray_pool
GPU_TYPE: str = _compute.GPU_TYPE
