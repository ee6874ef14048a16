"""Locate (or build) the stand-in ``libnvidia-ml.so.1`` of ``shims/testing`` and run code with it.

The stand-in reads its device table once per process (``HAMI_FAKE_GPU_CONFIG``), so every test
that needs NVML runs the backend in a child Python process whose ``LD_LIBRARY_PATH`` points at the
stand-in: ``nvidia-ml-py`` then loads it exactly as it loads the real library.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PROBE = Path(__file__).resolve().parent / "probe_backend.py"

UUID_A = "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448"
UUID_B = "GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec"
UUID_C = "GPU-a02b30b8-5b20-131c-0e47-6bc99948e264"

TABLE = f"""
device {UUID_A} name="Tesla V100-PCIE-32GB" memory_mib=32768 pci=0000:3b:00.0
device {UUID_B} name="NVIDIA A100-SXM4-80GB" memory_mib=81920 pci=0000:86:00.0
device {UUID_C} name="Tesla T4" memory_mib=15360 pci=0000:d8:00.0
"""


def standin_dir() -> Path:
    """The directory holding the stand-in ``libnvidia-ml.so.1``; built on first use.

    ``HAMI_FAKE_NVML_DIR`` wins; else ``build/shims/testing`` (``make -C shims``); else the one
    target is built into a private directory.
    """
    env = os.environ.get("HAMI_FAKE_NVML_DIR")
    if env:
        return Path(env)
    default = REPO / "build" / "shims" / "testing"
    if (default / "libnvidia-ml.so.1").exists():
        return default
    root = Path(tempfile.gettempdir()) / f"hami-nvidia-standin-{os.getuid()}"
    target = root / "testing" / "libnvidia-ml.so.1"
    if not target.exists():
        subprocess.run(
            ["make", "-s", "-C", str(REPO / "shims"), f"BUILD_ROOT={root}", str(target)],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return target.parent


def run_probe(
    table: str,
    request: dict[str, object],
    *,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, object]:
    """Run ``probe_backend.py`` with the stand-in NVML and device table ``table`` (a file path)."""
    child_env = {
        **os.environ,
        "LD_LIBRARY_PATH": str(standin_dir()),
        "HAMI_FAKE_GPU_CONFIG": table,
        **(env or {}),
    }
    proc = subprocess.run(
        [sys.executable, str(PROBE), json.dumps(request)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"probe failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result
