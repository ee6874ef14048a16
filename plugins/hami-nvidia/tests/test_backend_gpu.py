"""NvidiaBackend on a REAL GPU and driver (``pytest -m gpu``; never in the default run).

Runs the backend in a child process whose loader path does not contain the stand-in NVML, so the
driver's own ``libnvidia-ml.so.1`` is used. Skips when no driver library can be initialised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu

_CHILD = r"""
import dataclasses, json, sys
import pynvml
from hami_nvidia import backend, settings
try:
    b = backend.NvidiaBackend(settings.NodeSettings(split_count=3), topology=True)
except Exception as err:  # no driver here
    sys.stdout.write(json.dumps({"skip": str(err)}) + "\n"); sys.exit(0)
devices = [dataclasses.asdict(d) for d in b.discover()]
names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
         for i in range(pynvml.nvmlDeviceGetCount())]
samples = [dataclasses.asdict(s) for s in b.sample()]
health = dict(b.poll_health(0.2))
b.close()
sys.stdout.write(json.dumps({"driver": b.driver_version, "devices": devices, "names": names,
                             "samples": samples, "health": health}, default=list) + "\n")
"""


def test_real_gpu_discovery_and_health() -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "HAMI_FAKE_GPU_CONFIG")
    }
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in out:
        pytest.skip(f"no NVIDIA driver: {out['skip']}")
    devices = out["devices"]
    assert devices, "the driver reports no GPU"
    for dev, name in zip(devices, out["names"], strict=False):
        assert dev["id"].startswith(("GPU-", "MIG-"))
        assert dev["count"] == 3
        assert dev["devcore"] == 100
        assert dev["devmem"] > 0
        assert dev["type"] == (name if name.startswith("NVIDIA") else f"NVIDIA-{name}")
        assert dev["health"] is True
    # every GPU scores every other GPU when topology scoring is on
    for dev in devices:
        assert set(dev["links"]) == {d["id"] for d in devices} - {dev["id"]}
    assert all(s["memory_total_bytes"] > 0 for s in out["samples"])
    assert out["health"] == {}
