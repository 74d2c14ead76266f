"""``nvidia-smi`` queries: a light module (no heavy imports) for the batch executors' GPU
sampling and the job runner's local pool."""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["nvidia_smi"]


def nvidia_smi(query: str, timeout: float = 5) -> list[str] | None:
    """One line per local GPU of ``nvidia-smi --query-gpu=<query>`` (CSV, no header, no
    units); None without ``nvidia-smi`` or when it fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()]
