"""``hami monitor`` against the REAL kube-apiserver, reading region files written by the REAL shim.

The monitor runs as its own process (the ``hami monitor`` CLI). A test program allocates device
memory with the shim preloaded over the stand-in driver (``make -C shims``, run by the e2e tox
environment), its region file living where the device plugin mounts it,
``<hook>/containers/<podUID>_<container>/``. Pods labelled ``hami.io/vgpu-node=<node>`` get their
namespace, pod and container labels in the metrics; a pod without the label does not.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ControlPlane, ManagedProcess, free_port, request_json, wait_until
from kubernetes import client as k8s
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
GPU0 = "GPU-11111111-2222-3333-4444-555555555555"
DEVICES = (
    "driver_version = 13040\n"
    f'device {GPU0} name="NVIDIA A100-SXM4-80GB" memory_mib=81920 sms=108 threads_per_sm=2048 '
    "pci=0000:07:00.0\n"
)


def shim_build() -> Path:
    raw = Path(os.environ.get("HAMI_SHIM_BUILD", "build/shims"))
    build = raw if raw.is_absolute() else ROOT / raw
    missing = [
        p
        for p in ("libhami-cuda.so", "testing/libcuda.so.1", "snippets/paths")
        if not (build / p).exists()
    ]
    if missing:
        pytest.fail(f"shim build incomplete in {build} (missing {missing}); run `make -C shims`")
    return build


class Allocator:
    """``paths alloc <size> <count>`` under the shim; holds its memory until finished."""

    def __init__(self, build: Path, cache_file: Path, tmp: Path, size: int, count: int) -> None:
        (tmp / "gpus.conf").write_text(DEVICES)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CUDA_", "NVIDIA_", "HAMI_FAKE", "GPU_CORE")) and k != "LD_PRELOAD"
        }
        env.update(
            LD_PRELOAD=str(build / "libhami-cuda.so"),
            LD_LIBRARY_PATH=str(build / "testing"),
            CUDA_DEVICE_MEMORY_SHARED_CACHE=str(cache_file),
            CUDA_DEVICE_MEMORY_LIMIT="1g",
            HAMI_SHIM_MOUNTED_DIR=str(tmp / "no-mounted-dir"),
            HAMI_FAKE_GPU_CONFIG=str(tmp / "gpus.conf"),
        )
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        self.p = subprocess.Popen(
            [str(build / "snippets" / "paths"), "alloc", str(size), str(count)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._wait_for("hold=allocated")

    def _wait_for(self, line: str, timeout: float = 60) -> None:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        while line.encode() not in buf:
            ready, _, _ = select.select(
                [self.p.stdout], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                raise AssertionError(f"no {line!r} within {timeout}s: {buf!r}")
            chunk = os.read(self.p.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"exited before {line!r}: {buf!r}")
            buf += chunk

    def finish(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.communicate(input=b"\n\n\n", timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def create_pod(api: k8s.ApiClient, namespace: str, name: str, labels: dict[str, str]) -> str:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"schedulerName": "nobody", "containers": [{"name": "main", "image": "busybox"}]},
    }
    pod = request_json(api, "POST", f"/api/v1/namespaces/{namespace}/pods", body)
    return str(pod["metadata"]["uid"])


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http
        text = response.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend((dict(s.labels), s.value) for s in fam.samples)
    return out


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback http
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def allocators() -> Iterator[list[Allocator]]:
    started: list[Allocator] = []
    yield started
    for a in started:
        a.finish()


def test_labelled_pods_get_their_names_in_the_metrics(
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    namespace: str,
    tmp_path: Path,
    allocators: list[Allocator],
) -> None:
    build = shim_build()
    node = f"gpu-node-{uuid.uuid4().hex[:8]}"
    hook = tmp_path / "vgpu"
    label = {"hami.io/vgpu-node": node}
    uid1 = create_pod(api, namespace, "labelled", label)
    uid_other = create_pod(api, namespace, "unlabelled", {})
    allocators.append(
        Allocator(build, hook / "containers" / f"{uid1}_main" / "a.cache", tmp_path, 30 * MIB, 2)
    )
    allocators.append(
        Allocator(
            build, hook / "containers" / f"{uid_other}_main" / "a.cache", tmp_path, 10 * MIB, 1
        )
    )

    port = free_port()
    monitor = ManagedProcess(
        "hami-monitor",
        [
            sys.executable,
            "-m",
            "hami_core_fw.cli",
            "monitor",
            "--node-name",
            node,
            "--hook-path",
            str(hook),
            "--metrics-bind-address",
            f"127.0.0.1:{port}",
            "--kubeconfig",
            str(control_plane.kubeconfig),
            "--vendor",
            "fake",
            "--proc-root",
            str(tmp_path / "no-proc"),
        ],
        tmp_path / "monitor.log",
    )
    monitor.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: ready(base + "/readyz"), timeout=60, what="monitor /readyz", processes=[monitor]
        )
        got = scrape(base + "/metrics")
        labels = {
            "namespace": namespace,
            "pod": "labelled",
            "container": "main",
            "vdevice_index": "0",
            "device_uuid": GPU0,
            "zone": "vGPU",
        }
        assert got["hami_vgpu_memory_used_bytes"] == [(labels, 60 * MIB)]
        assert got["hami_vgpu_memory_limit_bytes"] == [(labels, 1 << 30)]
        assert got["hami_vgpu_memory_buffer_bytes"] == [(labels, 60 * MIB)]

        # a pod labelled for the node after start-up: its container appears without a restart
        uid2 = create_pod(api, namespace, "late", label)
        allocators.append(
            Allocator(
                build, hook / "containers" / f"{uid2}_main" / "a.cache", tmp_path, 20 * MIB, 1
            )
        )

        def late_reported() -> bool:
            pods = {
                s[0]["pod"]: s[1] for s in scrape(base + "/metrics")["hami_vgpu_memory_used_bytes"]
            }
            return pods == {"labelled": 60 * MIB, "late": 20 * MIB}

        wait_until(
            late_reported, timeout=30, what="the late pod in the metrics", processes=[monitor]
        )

        # the process frees its memory and exits: the usage drops to zero
        allocators[0].finish()
        after = scrape(base + "/metrics")["hami_vgpu_memory_used_bytes"]
        assert ({**labels}, 0.0) in after
    finally:
        monitor.stop()
    assert "Traceback" not in (tmp_path / "monitor.log").read_text()
