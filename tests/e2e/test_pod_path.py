"""The whole path of a pod through real components (issue 3, item 4; ARCHITECTURE.md section 2).

Real: etcd, kube-apiserver and kube-scheduler (built from the Go module proxy); our ``hami
scheduler`` process (webhook registered through a MutatingWebhookConfiguration, extender in the
KubeSchedulerConfiguration); our ``hami device-plugin --vendor nvidia`` process reading GPUs
through the real nvidia-ml-py.

Stand-ins, because no real one can run here: the kubelet (``hami_core_fw.testing.kubelet``, which
speaks the device-plugin gRPC API over unix sockets and calls ``Allocate`` as the kubelet's device
manager does), and the NVIDIA driver (the stand-in ``libnvidia-ml.so.1`` of ``shims/testing``).
In the placement tests nodes are registered by annotations in HAMi's exact format, as HAMi's mock
device plugin does, and a :class:`~components.LockReleaser` plays the device plugin's part of
releasing the node lock once a pod is bound.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from components import SCHEDULER, HamiScheduler, LockReleaser, device_plugin
from harness import ControlPlane, Json, request_json, wait_until
from kubernetes import client as k8s

from hami_core_fw import codec
from hami_core_fw.k8s import api as kapi

pytest.importorskip("hami_nvidia", reason="tox installs plugins/hami-nvidia for the e2e env")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins" / "hami-nvidia" / "tests"))
from nvml_standin import standin_dir

pytestmark = pytest.mark.e2e

GPU = "nvidia.com/gpu"
ALLOCATED = "hami.io/vgpu-devices-allocated"
TO_ALLOCATE = "hami.io/vgpu-devices-to-allocate"
LOCK = "hami.io/mutex.lock"
NV_REGISTER = "hami.io/node-nvidia-register"
FAKE_REGISTER = "hami.io/node-fake-register"
FAKE_ALLOCATED = "hami.io/fake-devices-allocated"
GPU_A = "GPU-0fc3eda5-e98b-a25b-5b0d-cf5c855d1448"
GPU_B = "GPU-00552014-5c87-89ac-b1a6-7b53aa24b0ec"


def annotations(obj: Json) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("annotations") or {})


def nvidia_pod(name: str, limits: dict[str, str], **annotations_: str) -> Json:
    """A pod as a user writes it: no schedulerName (the webhook sets it)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": dict(annotations_)},
        "spec": {
            "containers": [{"name": "main", "image": "cuda", "resources": {"limits": limits}}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def get_pod(api: k8s.ApiClient, namespace: str, name: str) -> Json:
    return request_json(api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")


def wait_bound(api: k8s.ApiClient, namespace: str, name: str, timeout: float = 60) -> Json:
    wait_until(
        lambda: bool(get_pod(api, namespace, name)["spec"].get("nodeName")),
        timeout=timeout,
        what=f"pod {name} to be bound",
    )
    return get_pod(api, namespace, name)


# ---------------------------------------------------------------------------------------------
# one pod, every component


def test_nvidia_pod_from_creation_to_allocate(
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    namespace: str,
    fake_node: Callable[..., Json],
    hami: HamiScheduler,
    kube_scheduler: Any,
) -> None:
    """nvidia.com/gpu 1 + gpumem 3000 + gpucores 30: webhook, filter, bind, Allocate, success."""
    node = fake_node()["metadata"]["name"]
    table = (
        f'device {GPU_A} name="Tesla V100-PCIE-32GB" memory_mib=32768 pci=0000:3b:00.0\n'
        f'device {GPU_B} name="NVIDIA A100-SXM4-80GB" memory_mib=81920 pci=0000:86:00.0\n'
    )

    async def scenario() -> None:
        async with device_plugin(
            control_plane,
            node,
            vendor="nvidia",
            device_config="nvidia:\n  deviceSplitCount: 4\n",
            nvml_table=table,
            nvml_dir=standin_dir(),
            extra_args=("--register-interval=30", "--watch-interval=0.05", "--grace-period=1"),
        ) as dp:
            await dp.kubelet.wait_registered(GPU, timeout=30)
            await dp.kubelet.write_node_status(dp.kube, node)  # the kubelet's part: allocatable
            registered = await wait_for_node(dp.kube, node, lambda n: NV_REGISTER in annotations(n))
            devices = codec.decode_registration(NV_REGISTER, annotations(registered)[NV_REGISTER])
            assert {d.id for d in devices} == {GPU_A, GPU_B}

            limits = {GPU: "1", "nvidia.com/gpumem": "3000", "nvidia.com/gpucores": "30"}
            created = request_json(
                api, "POST", f"/api/v1/namespaces/{namespace}/pods", nvidia_pod("job", limits)
            )
            assert created["spec"]["schedulerName"] == SCHEDULER  # set by our webhook
            pod = await asyncio.to_thread(wait_bound, api, namespace, "job")
            assert pod["spec"]["nodeName"] == node
            meta = annotations(pod)
            (entry,) = codec.decode_pod_devices(ALLOCATED, meta[ALLOCATED])
            (chosen,) = entry
            assert chosen.uuid in (GPU_A, GPU_B)
            assert (chosen.type, chosen.usedmem, chosen.usedcores) == ("NVIDIA", 3000, 30)
            assert meta[TO_ALLOCATE] == meta[ALLOCATED]
            assert meta["hami.io/vgpu-node"] == node
            assert meta["hami.io/bind-phase"] == "allocating"
            assert pod["metadata"]["labels"]["hami.io/vgpu-node"] == node
            lock_value = annotations(await dp.kube.get_node(node))[LOCK]
            assert lock_value.endswith(f",{namespace},job")

            # the kubelet admits the pod on its node: Allocate for its one container
            admission = await dp.kubelet.admit_container(GPU, 1)
            envs = dict(admission.response.envs)
            assert envs["NVIDIA_VISIBLE_DEVICES"] == chosen.uuid
            assert envs["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
            assert envs["CUDA_DEVICE_SM_LIMIT"] == "30"
            mounts = {m.container_path for m in admission.response.mounts}
            assert "/etc/ld.so.preload" in mounts

            after = annotations(await dp.kube.get_pod(namespace, "job"))
            assert after["hami.io/bind-phase"] == "success"
            assert after[TO_ALLOCATE] == ";"
            assert after[ALLOCATED] == meta[ALLOCATED]
            assert LOCK not in annotations(await dp.kube.get_node(node))

    asyncio.run(asyncio.wait_for(scenario(), 180))


async def wait_for_node(
    kube: kapi.Kube, name: str, pred: Callable[[Json], bool], timeout: float = 30.0
) -> Json:
    """GET the node, then watch it until ``pred`` holds."""

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
                if event.get("type") in ("ADDED", "MODIFIED") and pred(event["object"]):
                    return dict(event["object"])

    return await asyncio.wait_for(wait(), timeout)


# ---------------------------------------------------------------------------------------------
# placement across mixed nodes


def nv_registration(uuids: list[str], model: str, devmem: int, *, slots: int = 10) -> str:
    """HAMi v2.10's registration JSON for NVIDIA GPUs (hami-compat.md 3.2)."""
    return json.dumps(
        [
            {
                "id": u,
                "index": i,
                "count": slots,
                "devmem": devmem,
                "devcore": 100,
                "type": model,
                "mode": "hami-core",
                "health": True,
            }
            for i, u in enumerate(uuids)
        ],
        separators=(",", ":"),
    )


@pytest.fixture
def mixed_cluster(fake_node: Callable[..., Json]) -> dict[str, tuple[str, list[str]]]:
    """Three NVIDIA nodes of different models and one fake-vendor node, registered HAMi's way."""
    tag = uuid.uuid4().hex[:6]
    layout = {
        "a100": ("NVIDIA-NVIDIA A100-SXM4-80GB", 81920, 2),
        "t4": ("NVIDIA-Tesla T4", 15360, 2),
        "v100": ("NVIDIA-Tesla V100-PCIE-32GB", 32768, 1),
    }
    cluster: dict[str, tuple[str, list[str]]] = {}
    for key, (model, devmem, n) in layout.items():
        name = f"{key}-{tag}"
        uuids = [f"GPU-{key}-{tag}-{i}" for i in range(n)]
        fake_node(
            name,
            extended_resources={GPU: n * 10},
            annotations={NV_REGISTER: nv_registration(uuids, model, devmem)},
        )
        cluster[key] = (name, uuids)
    fake_name = f"fake-{tag}"
    fake_uuids = [f"FAKE-{tag}-{i}" for i in range(2)]
    fake_node(
        fake_name,
        extended_resources={"hami.io/fake-gpu": 20},
        annotations={FAKE_REGISTER: nv_registration(fake_uuids, "FAKE-GPU-16G", 16384)},
    )
    cluster["fake"] = (fake_name, fake_uuids)
    return cluster


def place(api: k8s.ApiClient, namespace: str, body: Json) -> tuple[str, Json]:
    """Create a pod, wait until it is bound; return its node and annotations."""
    request_json(api, "POST", f"/api/v1/namespaces/{namespace}/pods", body)
    pod = wait_bound(api, namespace, body["metadata"]["name"])
    return pod["spec"]["nodeName"], annotations(pod)


def device_of(meta: dict[str, str], key: str = ALLOCATED) -> str:
    ((dev,),) = codec.decode_pod_devices(key, meta[key])
    return dev.uuid


def test_binpack_spread_and_device_selection_on_mixed_nodes(
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    namespace: str,
    mixed_cluster: dict[str, tuple[str, list[str]]],
    hami: HamiScheduler,
    kube_scheduler: Any,
) -> None:
    small = {GPU: "1", "nvidia.com/gpumem": "2000", "nvidia.com/gpucores": "10"}
    node_of = {name: key for key, (name, _) in mixed_cluster.items()}
    with LockReleaser(control_plane, namespace):
        # binpack: the second pod joins the first one's node, and its GPU (GPU binpack)
        first, m1 = place(
            api,
            namespace,
            nvidia_pod(
                "bp-1",
                small,
                **{
                    "hami.io/node-scheduler-policy": "binpack",
                    "hami.io/gpu-scheduler-policy": "binpack",
                },
            ),
        )
        second, m2 = place(
            api,
            namespace,
            nvidia_pod(
                "bp-2",
                small,
                **{
                    "hami.io/node-scheduler-policy": "binpack",
                    "hami.io/gpu-scheduler-policy": "binpack",
                },
            ),
        )
        assert second == first
        assert device_of(m2) == device_of(m1)
        # spread: the next pod avoids the only used node
        third, _ = place(
            api,
            namespace,
            nvidia_pod("sp-1", small, **{"hami.io/node-scheduler-policy": "spread"}),
        )
        assert third != first
        # model selection by substring, and exclusion
        t4, m_t4 = place(
            api, namespace, nvidia_pod("want-t4", small, **{"nvidia.com/use-gputype": "T4"})
        )
        assert node_of[t4] == "t4"
        assert device_of(m_t4) in mixed_cluster["t4"][1]
        not_ab, _ = place(
            api,
            namespace,
            nvidia_pod("not-a100-t4", small, **{"nvidia.com/nouse-gputype": "A100,T4"}),
        )
        assert node_of[not_ab] == "v100"
        # one exact GPU by UUID
        wanted = mixed_cluster["a100"][1][1]
        a100, m_uuid = place(
            api, namespace, nvidia_pod("want-uuid", small, **{"nvidia.com/use-gpuuuid": wanted})
        )
        assert node_of[a100] == "a100"
        assert device_of(m_uuid) == wanted
        # the fake vendor's pods go to the fake vendor's node
        fake_limits = {"hami.io/fake-gpu": "1", "hami.io/fake-gpumem": "1000"}
        fake, m_fake = place(api, namespace, nvidia_pod("fake-1", fake_limits))
        assert node_of[fake] == "fake"
        assert device_of(m_fake, FAKE_ALLOCATED) in mixed_cluster["fake"][1]


def test_pod_that_fits_nowhere_names_the_reasons(
    api: k8s.ApiClient,
    namespace: str,
    mixed_cluster: dict[str, tuple[str, list[str]]],
    hami: HamiScheduler,
    kube_scheduler: Any,
) -> None:
    huge = {GPU: "1", "nvidia.com/gpumem": "100000"}
    request_json(api, "POST", f"/api/v1/namespaces/{namespace}/pods", nvidia_pod("huge", huge))

    def failed_messages() -> list[str]:
        events = request_json(
            api,
            "GET",
            f"/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name=huge",
        )["items"]
        return [e["message"] for e in events if e.get("reason") == "FilteringFailed"]

    wait_until(lambda: bool(failed_messages()), timeout=60, what="a FilteringFailed event")
    text = " ".join(failed_messages())
    assert "CardInsufficientMemory" in text
    for key in ("a100", "t4", "v100"):
        assert mixed_cluster[key][0] in text
    assert not get_pod(api, namespace, "huge")["spec"].get("nodeName")
