"""``hami device-plugin --vendor nvidia`` end to end: the real process, the stand-in NVML, the
kubelet stand-in and a REAL kube-apiserver.

The plugin runs as a child process exactly as on a node (nvidia-ml-py loads the stand-in
``libnvidia-ml.so.1`` from ``LD_LIBRARY_PATH``); the test process plays the kubelet (unix sockets)
and the scheduler (it writes HAMi-format pod annotations and the node lock, golden strings of
hami-compat.md 3.4/3.7), then checks what the plugin answered and wrote.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from components import device_plugin
from harness import ControlPlane, Json, request_json
from kubernetes import client as k8s

from hami_core_fw import codec
from hami_core_fw.k8s import api as kapi
from hami_core_fw.testing.kubelet import AdmissionError, FakeKubelet

hami_nvidia = pytest.importorskip("hami_nvidia", reason="install plugins/hami-nvidia")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins" / "hami-nvidia" / "tests"))
from nvml_standin import standin_dir  # noqa: E402 - helper of the plugin's own tests

pytestmark = [pytest.mark.e2e, pytest.mark.controlplane]

RESOURCE = "nvidia.com/gpu"
LOCK = "hami.io/mutex.lock"
TO_ALLOCATE = "hami.io/vgpu-devices-to-allocate"
ALLOCATED = "hami.io/vgpu-devices-allocated"
REGISTER = "hami.io/node-nvidia-register"
GPU_A = "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448"
GPU_B = "GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec"
SPLIT = 4
TABLE = f"""
device {GPU_A} name="Tesla V100-PCIE-32GB" memory_mib=32768 pci=0000:3b:00.0
device {GPU_B} name="NVIDIA A100-SXM4-80GB" memory_mib=81920 pci=0000:86:00.0
"""


@dataclass
class Env:
    kube: kapi.Kube
    kubelet: FakeKubelet
    node: str
    namespace: str
    hook: Path
    table: Path
    api: k8s.ApiClient
    log: Path


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 120))


@asynccontextmanager
async def plugin(
    control_plane: ControlPlane, api: k8s.ApiClient, node: str, namespace: str
) -> AsyncIterator[Env]:
    async with device_plugin(
        control_plane,
        node,
        vendor="nvidia",
        device_config=f"nvidia:\n  deviceSplitCount: {SPLIT}\n  deviceMemoryScaling: 1\n",
        nvml_table=TABLE,
        nvml_dir=standin_dir(),
        extra_args=(
            "--register-interval=30",
            "--health-interval=0.2",
            "--watch-interval=0.05",
            "--grace-period=1",
        ),
    ) as dp:
        yield Env(dp.kube, dp.kubelet, node, namespace, dp.hook, dp.table, api, dp.log)


async def wait_node(
    kube: kapi.Kube, name: str, pred: Callable[[Json], bool], timeout: float = 20.0
) -> Json:
    """Event-driven wait on a node (GET, then watch from its resourceVersion)."""

    async def wait() -> Json:
        while True:
            node = await kube.get_node(name)
            if pred(node):
                return node
            async for event in kube.watch(
                "/api/v1/nodes",
                resource_version=node["metadata"]["resourceVersion"],
                field_selector=f"metadata.name={name}",
                timeout_s=int(timeout) + 1,
            ):
                obj = event.get("object") or {}
                if event.get("type") in ("ADDED", "MODIFIED") and pred(obj):
                    return obj

    return await asyncio.wait_for(wait(), timeout)


def annotations(obj: Json) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("annotations") or {})


def make_pod(
    e: Env,
    name: str,
    to_allocate: str,
    *,
    init: list[Json] | None = None,
    containers: list[Json] | None = None,
    lock: bool = True,
) -> Json:
    now = dt.datetime.now(dt.UTC)
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": {
                TO_ALLOCATE: to_allocate,
                ALLOCATED: to_allocate,
                "hami.io/vgpu-node": e.node,
                "hami.io/vgpu-time": str(int(now.timestamp())),
                "hami.io/bind-phase": "allocating",
                "hami.io/bind-time": str(int(now.timestamp())),
            },
            "labels": {"hami.io/vgpu-node": e.node},
        },
        "spec": {
            "schedulerName": "nobody",
            "nodeName": e.node,
            "initContainers": init or [],
            "containers": containers
            or [{"name": "main", "image": "busybox", "resources": gpu_limits(1)}],
        },
    }
    pod = request_json(e.api, "POST", f"/api/v1/namespaces/{e.namespace}/pods", body)
    if lock:
        value = codec.encode_node_lock(codec.NodeLock(now, e.namespace, name))
        request_json(
            e.api,
            "PATCH",
            f"/api/v1/nodes/{e.node}",
            {"metadata": {"annotations": {LOCK: value}}},
            content_type="application/merge-patch+json",
        )
    return pod


def gpu_limits(n: int) -> Json:
    return {"limits": {RESOURCE: str(n)}}


async def get_pod(e: Env, name: str) -> Json:
    return await e.kube.get_pod(e.namespace, name)


async def lock_value(e: Env) -> str | None:
    return annotations(await e.kube.get_node(e.node)).get(LOCK)


@pytest.fixture
def gpu_node(fake_node: Callable[..., Json]) -> str:
    return str(fake_node()["metadata"]["name"])


# ------------------------------------------------------------------------------------------------


def test_registration_replicas_node_annotation_and_status(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, gpu_node: str
) -> None:
    async def scenario() -> None:
        async with plugin(control_plane, api, gpu_node, namespace) as e:
            res = await e.kubelet.wait_registered(RESOURCE, timeout=30)
            assert res.endpoint == "nvidia-gpu.sock"
            assert sorted(res.devices) == sorted(
                f"{g}-{i}" for g in (GPU_A, GPU_B) for i in range(SPLIT)
            )
            assert not res.options.get_preferred_allocation_available
            node = await wait_node(e.kube, gpu_node, lambda n: REGISTER in annotations(n))
            registered = json.loads(annotations(node)[REGISTER])
            # HAMi's JSON registration (3.2): omit-if-zero, NVIDIA- prefix rule, health true
            assert registered == [
                {
                    "id": GPU_A,
                    "count": SPLIT,
                    "devmem": 32768,
                    "devcore": 100,
                    "type": "NVIDIA-Tesla V100-PCIE-32GB",
                    "mode": "hami-core",
                    "health": True,
                },
                {
                    "id": GPU_B,
                    "index": 1,
                    "count": SPLIT,
                    "devmem": 81920,
                    "devcore": 100,
                    "type": "NVIDIA A100-SXM4-80GB",
                    "mode": "hami-core",
                    "health": True,
                },
            ]
            await e.kubelet.write_node_status(e.kube, gpu_node)
            node = await e.kube.get_node(gpu_node)
            assert node["status"]["allocatable"][RESOURCE] == str(2 * SPLIT)
            assert node["status"]["capacity"][RESOURCE] == str(2 * SPLIT)

    run(scenario)


def test_xid_makes_replicas_unhealthy_and_registration_follows(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, gpu_node: str
) -> None:
    async def scenario() -> None:
        async with plugin(control_plane, api, gpu_node, namespace) as e:
            await e.kubelet.wait_registered(RESOURCE, timeout=30)
            await wait_node(e.kube, gpu_node, lambda n: REGISTER in annotations(n))
            with e.table.open("a") as f:
                f.write(f"xid {GPU_A} 13\n")  # application error: ignored
                f.write(f"xid {GPU_B} 79\n")  # GPU fell off the bus: fault
            got = await e.kubelet.wait_devices(
                RESOURCE, lambda d: d[f"{GPU_B}-0"].health == "Unhealthy", timeout=20
            )
            assert {d.health for i, d in got.items() if i.startswith(GPU_B)} == {"Unhealthy"}
            assert {d.health for i, d in got.items() if i.startswith(GPU_A)} == {"Healthy"}
            node = await wait_node(
                e.kube,
                gpu_node,
                lambda n: "health" not in json.loads(annotations(n).get(REGISTER, "[{}, {}]"))[1],
            )
            reg = json.loads(annotations(node)[REGISTER])
            assert reg[0]["health"] is True
            assert "health" not in reg[1]  # absent health = unhealthy (Q4)
            res = e.kubelet.resources[RESOURCE]
            assert (res.capacity, res.allocatable) == (2 * SPLIT, SPLIT)

    run(scenario)


def test_kubelet_restart_reregisters(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, gpu_node: str
) -> None:
    async def scenario() -> None:
        async with plugin(control_plane, api, gpu_node, namespace) as e:
            await e.kubelet.wait_registered(RESOURCE, timeout=30)
            await e.kubelet.restart()
            res = await e.kubelet.wait_registered(RESOURCE, registrations=2, timeout=20)
            assert len(res.devices) == 2 * SPLIT
            assert res.allocatable == 2 * SPLIT

    run(scenario)


def test_allocate_golden_single_container(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, gpu_node: str
) -> None:
    async def scenario() -> None:
        async with plugin(control_plane, api, gpu_node, namespace) as e:
            await e.kubelet.wait_registered(RESOURCE, timeout=30)
            pod = make_pod(e, "single", f"{GPU_A},NVIDIA,3000,30:;")
            uid = pod["metadata"]["uid"]
            adm = await e.kubelet.admit_container(RESOURCE, 1)
            envs = dict(adm.response.envs)
            assert envs["NVIDIA_VISIBLE_DEVICES"] == GPU_A
            assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
            assert envs["CUDA_DEVICE_SM_LIMIT"] == "30"
            assert envs["LIBCUDA_LOG_LEVEL"] == "1"
            assert "CUDA_OVERSUBSCRIBE" not in envs
            cache = envs["CUDA_DEVICE_MEMORY_SHARED_CACHE"]
            assert cache.startswith(f"{e.hook}/vgpu/") and cache.endswith(".cache")
            mounts = {m.container_path: (m.host_path, m.read_only) for m in adm.response.mounts}
            vgpu = f"{e.hook}/vgpu"
            assert mounts == {
                f"{vgpu}/libvgpu.so": (f"{vgpu}/libvgpu.so", True),
                vgpu: (f"{vgpu}/containers/{uid}_main", False),
                "/tmp/vgpulock": ("/tmp/vgpulock", False),
                "/etc/ld.so.preload": (f"{vgpu}/ld.so.preload", True),
            }
            assert Path(f"{vgpu}/containers/{uid}_main").is_dir()
            after = annotations(await get_pod(e, "single"))
            assert after[TO_ALLOCATE] == ";"
            assert after[ALLOCATED] == f"{GPU_A},NVIDIA,3000,30:;"
            assert after["hami.io/bind-phase"] == "success"
            assert await lock_value(e) is None

    run(scenario)


def test_allocate_multi_container_multi_gpu_and_disable_control(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, gpu_node: str
) -> None:
    async def scenario() -> None:
        async with plugin(control_plane, api, gpu_node, namespace) as e:
            await e.kubelet.wait_registered(RESOURCE, timeout=30)
            value = f";{GPU_A},NVIDIA,1000,0:;{GPU_A},NVIDIA,2000,20:{GPU_B},NVIDIA,2000,20:;"
            pod = make_pod(
                e,
                "multi",
                value,
                init=[{"name": "setup", "image": "busybox"}],
                containers=[
                    {
                        "name": "c1",
                        "image": "busybox",
                        "resources": gpu_limits(1),
                        "env": [{"name": "CUDA_DISABLE_CONTROL", "value": "true"}],
                    },
                    {"name": "c2", "image": "busybox", "resources": gpu_limits(2)},
                ],
            )
            uid = pod["metadata"]["uid"]
            first, second = await e.kubelet.admit_pod(RESOURCE, [1, 2])
            assert first is not None and second is not None
            e1, e2 = dict(first.response.envs), dict(second.response.envs)
            assert e1["NVIDIA_VISIBLE_DEVICES"] == GPU_A
            assert e1["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1000m"
            # CUDA_DISABLE_CONTROL=true: no /etc/ld.so.preload, everything else stays
            paths1 = {m.container_path: m.host_path for m in first.response.mounts}
            assert "/etc/ld.so.preload" not in paths1
            assert paths1[f"{e.hook}/vgpu"] == f"{e.hook}/vgpu/containers/{uid}_c1"
            assert e2["NVIDIA_VISIBLE_DEVICES"] == f"{GPU_A},{GPU_B}"
            assert (e2["CUDA_DEVICE_MEMORY_LIMIT_0"], e2["CUDA_DEVICE_MEMORY_LIMIT_1"]) == (
                "2000m",
                "2000m",
            )
            assert e2["CUDA_DEVICE_SM_LIMIT"] == "20"
            paths2 = {m.container_path: m.host_path for m in second.response.mounts}
            assert paths2["/etc/ld.so.preload"] == f"{e.hook}/vgpu/ld.so.preload"
            assert paths2[f"{e.hook}/vgpu"] == f"{e.hook}/vgpu/containers/{uid}_c2"
            after = annotations(await get_pod(e, "multi"))
            assert after[TO_ALLOCATE] == ";;;"
            assert after["hami.io/bind-phase"] == "success"
            assert await lock_value(e) is None

    run(scenario)


def test_allocate_keeps_lock_until_the_last_container(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, gpu_node: str
) -> None:
    async def scenario() -> None:
        async with plugin(control_plane, api, gpu_node, namespace) as e:
            await e.kubelet.wait_registered(RESOURCE, timeout=30)
            make_pod(
                e,
                "two",
                f"{GPU_A},NVIDIA,1000,0:;{GPU_B},NVIDIA,1000,0:;",
                containers=[
                    {"name": "a", "image": "busybox", "resources": gpu_limits(1)},
                    {"name": "b", "image": "busybox", "resources": gpu_limits(1)},
                ],
            )
            held = await lock_value(e)
            await e.kubelet.admit_container(RESOURCE, 1)
            mid = annotations(await get_pod(e, "two"))
            assert mid[TO_ALLOCATE] == f";{GPU_B},NVIDIA,1000,0:;"
            assert mid["hami.io/bind-phase"] == "allocating"
            assert await lock_value(e) == held
            adm = await e.kubelet.admit_container(RESOURCE, 1)
            assert adm.response.envs["NVIDIA_VISIBLE_DEVICES"] == GPU_B
            assert annotations(await get_pod(e, "two"))["hami.io/bind-phase"] == "success"
            assert await lock_value(e) is None

    run(scenario)


def test_allocate_errors_mark_failed_and_release_the_lock(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, gpu_node: str
) -> None:
    async def scenario() -> None:
        async with plugin(control_plane, api, gpu_node, namespace) as e:
            await e.kubelet.wait_registered(RESOURCE, timeout=30)
            # count mismatch: the scheduler reserved one GPU, the kubelet asks for two
            make_pod(e, "mismatch", f"{GPU_A},NVIDIA,1000,0:;")
            with pytest.raises(AdmissionError, match="device number not matched"):
                await e.kubelet.admit_container(RESOURCE, 2)
            ann = annotations(await get_pod(e, "mismatch"))
            assert ann["hami.io/bind-phase"] == "failed"
            assert ann[TO_ALLOCATE] == f"{GPU_A},NVIDIA,1000,0:;"  # untouched
            assert await lock_value(e) is None
            # no pending pod: the lock owner has nothing left to allocate
            make_pod(e, "served", ";")
            with pytest.raises(AdmissionError, match="no pending pod"):
                await e.kubelet.admit_container(RESOURCE, 1)
            assert annotations(await get_pod(e, "served"))["hami.io/bind-phase"] == "failed"
            assert await lock_value(e) is None
            # no lock and no annotated pod at all
            with pytest.raises(AdmissionError, match="no pending pod"):
                await e.kubelet.admit_container(RESOURCE, 1)

    run(scenario)


def test_allocate_finds_the_pod_without_a_lock_and_reports_latency(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, gpu_node: str
) -> None:
    async def scenario() -> None:
        async with plugin(control_plane, api, gpu_node, namespace) as e:
            await e.kubelet.wait_registered(RESOURCE, timeout=30)
            durations = []
            for i in range(10):
                make_pod(e, f"nolock-{i}", f"{GPU_B},NVIDIA,500,5:;", lock=(i % 2 == 0))
                began = time.perf_counter()
                adm = await e.kubelet.admit_container(RESOURCE, 1)
                durations.append(time.perf_counter() - began)
                e.kubelet.release(adm.device_ids, RESOURCE)
                assert adm.response.envs["NVIDIA_VISIBLE_DEVICES"] == GPU_B
                ann = annotations(await get_pod(e, f"nolock-{i}"))
                assert ann["hami.io/bind-phase"] == "success"
                # the pod is Pending forever (no real kubelet): mark it done so the
                # fallback listing of the next round does not see it again
                assert ann[TO_ALLOCATE] == ";"
            ms = sorted(d * 1000 for d in durations)
            sys.stderr.write(
                f"\n[allocate latency, kubelet stand-in -> plugin -> kube-apiserver] "
                f"n={len(ms)} median={statistics.median(ms):.1f}ms max={ms[-1]:.1f}ms\n"
            )

    run(scenario)
