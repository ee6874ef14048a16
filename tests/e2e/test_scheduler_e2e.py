"""``hami scheduler`` as a real process against a real kube-apiserver and kube-scheduler.

The scheduler runs as a subprocess (``python -m hami_core_fw.cli scheduler``) serving HTTPS with a
certificate of the harness CA; kube-scheduler is configured with it as extender (filter + bind,
nodeCacheCapable, every fake-vendor resource ``ignoredByScheduler``) and the API server calls its
webhook through a MutatingWebhookConfiguration. Nodes are registered in HAMi's JSON shape under
``hami.io/node-fake-register`` (the ``fake`` vendor: ``hami.io/fake-gpu``, ``-gpumem``,
``-gpucores``).

No device plugin runs here yet, so nothing would release the node lock after a bind. Where many
pods land on one node, a :class:`LockReleaser` plays the device plugin's part: it watches the pods
of the test namespace and releases the node lock (through ``hami_core_fw.k8s.lock``) as soon as the
pod holding it is bound — the next bind for that node, waiting in the scheduler's per-node queue,
then proceeds at once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from components import SCHEDULER, HamiScheduler, LockReleaser
from harness import (
    ControlPlane,
    Json,
    request_json,
    wait_until,
)
from kubernetes import client as k8s

from hami_core_fw import _names, codec

pytestmark = pytest.mark.e2e

FAKE_GPU = "hami.io/fake-gpu"
FAKE_MEM = "hami.io/fake-gpumem"
FAKE_CORES = "hami.io/fake-gpucores"
REGISTER = "hami.io/node-fake-register"
ALLOCATED = "hami.io/fake-devices-allocated"
DEVMEM = 16384


# ---------------------------------------------------------------------------------------------
# the scheduler process


# ---------------------------------------------------------------------------------------------
# helpers


def registration(node: str, n_devices: int, *, slots: int = 10) -> str:
    return json.dumps(
        [
            {
                "id": f"FAKE-{node}-{i}",
                "index": i,
                "count": slots,
                "devmem": DEVMEM,
                "devcore": 100,
                "type": "FAKE-GPU-16G",
                "mode": "hami-core",
                "health": True,
            }
            for i in range(n_devices)
        ]
    )


def gpu_node(fake_node: Callable[..., Json], n_devices: int = 2, *, slots: int = 10) -> str:
    name = f"gpu-{uuid.uuid4().hex[:8]}"
    fake_node(
        name,
        extended_resources={FAKE_GPU: n_devices * slots},
        annotations={REGISTER: registration(name, n_devices, slots=slots)},
    )
    return name


def pod_body(name: str, *, gpus: int = 1, mem: int = 3000, cores: int = 30, **meta: Any) -> Json:
    limits = {FAKE_GPU: str(gpus), FAKE_MEM: str(mem), FAKE_CORES: str(cores)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **meta},
        "spec": {
            "containers": [{"name": "main", "image": "pause", "resources": {"limits": limits}}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def create_pod(api: k8s.ApiClient, namespace: str, body: Json) -> Json:
    return request_json(api, "POST", f"/api/v1/namespaces/{namespace}/pods", body)


def get_pod(api: k8s.ApiClient, namespace: str, name: str) -> Json:
    return request_json(api, "GET", f"/api/v1/namespaces/{namespace}/pods/{name}")


def list_pods(api: k8s.ApiClient, namespace: str) -> list[Json]:
    items: list[Json] = request_json(api, "GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
    return items


def assert_not_overcommitted(pods: list[Json], nodes: dict[str, int], slots: int = 10) -> None:
    """Sum every device's allocations from the pods' annotations: memory, cores and slots."""
    per_device: dict[str, list[int]] = {}
    for pod in pods:
        annotations = pod["metadata"].get("annotations") or {}
        value = annotations.get(ALLOCATED)
        if value is None:
            continue
        node = pod["spec"]["nodeName"]
        assert annotations[_names.ANNOTATION_VGPU_NODE] == node
        for entry in codec.decode_pod_devices(ALLOCATED, value):
            for dev in entry:
                assert dev.uuid.startswith(f"FAKE-{node}-"), (dev.uuid, node)
                totals = per_device.setdefault(dev.uuid, [0, 0, 0])
                totals[0] += dev.usedmem
                totals[1] += dev.usedcores
                totals[2] += 1
    for uuid_, (mem, cores, count) in per_device.items():
        assert mem <= DEVMEM, (uuid_, mem)
        assert cores <= 100, (uuid_, cores)
        assert count <= slots, (uuid_, count)
    assert set(nodes) >= {u.rsplit("-", 1)[0].removeprefix("FAKE-") for u in per_device}


# ---------------------------------------------------------------------------------------------
# tests


def test_one_pod_is_mutated_bound_with_hami_annotations_and_locks_the_node(
    hami: HamiScheduler,
    kube_scheduler: Any,
    api: k8s.ApiClient,
    namespace: str,
    fake_node: Callable[..., Json],
) -> None:
    node = gpu_node(fake_node, 2)
    created = create_pod(api, namespace, pod_body("one"))
    # the webhook set the scheduler name (the pod did not ask for one)
    assert created["spec"]["schedulerName"] == SCHEDULER
    wait_until(
        lambda: bool(get_pod(api, namespace, "one")["spec"].get("nodeName")),
        timeout=60,
        what="pod one bound",
        processes=[hami.process] if hami.process else [],
    )
    pod = get_pod(api, namespace, "one")
    annotations = pod["metadata"]["annotations"]
    assert pod["spec"]["nodeName"] == node
    assert annotations[_names.ANNOTATION_VGPU_NODE] == node
    assert annotations[_names.ANNOTATION_BIND_PHASE] == _names.BIND_PHASE_ALLOCATING
    assert int(annotations[_names.ANNOTATION_BIND_TIME]) >= int(
        annotations[_names.ANNOTATION_VGPU_TIME]
    )
    assert pod["metadata"]["labels"][_names.LABEL_VGPU_NODE] == node
    assert annotations[ALLOCATED] == annotations["hami.io/fake-devices-to-allocate"]
    (entry,) = codec.decode_pod_devices(ALLOCATED, annotations[ALLOCATED])
    (dev,) = entry
    assert (dev.type, dev.usedmem, dev.usedcores) == ("FAKE", 3000, 30)
    assert dev.uuid.startswith(f"FAKE-{node}-")
    # the node lock is held by this pod until the device plugin releases it
    node_obj = request_json(api, "GET", f"/api/v1/nodes/{node}")
    value = node_obj["metadata"]["annotations"][_names.ANNOTATION_NODE_LOCK]
    assert codec.lock_owned_by(value, namespace, "one")

    # BindingSucceed was recorded with HAMi's message
    def has_event(reason: str) -> bool:
        evs = request_json(api, "GET", f"/api/v1/namespaces/{namespace}/events")["items"]
        return any(e["reason"] == reason and e["involvedObject"]["name"] == "one" for e in evs)

    wait_until(lambda: has_event("BindingSucceed"), timeout=30, what="BindingSucceed event")
    assert has_event("FilteringSucceed")


def test_pod_that_fits_nowhere_stays_pending_with_filtering_failed(
    hami: HamiScheduler,
    kube_scheduler: Any,
    api: k8s.ApiClient,
    namespace: str,
    fake_node: Callable[..., Json],
) -> None:
    gpu_node(fake_node, 2)
    create_pod(api, namespace, pod_body("huge", mem=DEVMEM + 1000))

    def failed_events() -> list[Json]:
        evs = request_json(api, "GET", f"/api/v1/namespaces/{namespace}/events")["items"]
        return [e for e in evs if e["reason"] == "FilteringFailed"]

    wait_until(lambda: len(failed_events()) >= 2, timeout=60, what="FilteringFailed events")
    messages = [e["message"] for e in failed_events()]
    assert any("CardInsufficientMemory" in m for m in messages), messages
    assert any(m.startswith("no available node") for m in messages), messages
    assert all(e["type"] == "Warning" for e in failed_events())
    pod = get_pod(api, namespace, "huge")
    assert not pod["spec"].get("nodeName")
    assert pod["status"]["phase"] == "Pending"


def test_forged_allocation_annotation_is_rejected(
    hami: HamiScheduler, api: k8s.ApiClient, namespace: str
) -> None:
    body = pod_body(
        "forged", annotations={"hami.io/vgpu-devices-allocated": "GPU-x,NVIDIA,1000,10:;"}
    )
    with pytest.raises(k8s.ApiException) as info:
        create_pod(api, namespace, body)
    assert info.value.status == 403
    assert "hami.io/vgpu-devices-allocated" in str(info.value.body)
    assert "denied" in str(info.value.body)


def test_fifty_pods_on_four_nodes_all_bound_without_overcommit(
    hami: HamiScheduler,
    kube_scheduler: Any,
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    namespace: str,
    fake_node: Callable[..., Json],
) -> None:
    """4 nodes x 2 devices (16384 MiB, 10 slots); 50 pods of 2000 MiB / 10 cores.

    Memory allows 8 pods per device (64 in all), so every pod fits but devices fill up; the lock
    of each node is released by :class:`LockReleaser` as soon as its pod is bound, so binds for
    the same node queue in the scheduler and go through one after the other.
    """
    nodes = {gpu_node(fake_node, 2): 2 for _ in range(4)}
    with LockReleaser(control_plane, namespace) as releaser:
        begin = time.monotonic()
        for i in range(50):
            create_pod(api, namespace, pod_body(f"p{i:02d}", mem=2000, cores=10))
        all_bound = releaser.wait_bound(50, timeout=240)
        elapsed = time.monotonic() - begin
        assert releaser.error is None
        assert all_bound, f"only {len(releaser.bound)} of 50 bound\n{hami.log()}"
    pods = list_pods(api, namespace)
    assert len(pods) == 50 and all(p["spec"].get("nodeName") in nodes for p in pods)
    assert_not_overcommitted(pods, nodes)
    print(f"\n[e2e] 50 pods bound in {elapsed:.1f}s ({50 / elapsed:.1f} pods/s)")  # noqa: T201


def test_scheduler_killed_and_restarted_mid_stream_loses_and_doubles_nothing(
    hami: HamiScheduler,
    kube_scheduler: Any,
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    namespace: str,
    fake_node: Callable[..., Json],
) -> None:
    nodes = {gpu_node(fake_node, 2): 2 for _ in range(3)}
    with LockReleaser(control_plane, namespace) as releaser:
        for i in range(30):
            create_pod(api, namespace, pod_body(f"r{i:02d}", mem=2000, cores=10))
        assert releaser.wait_bound(8, timeout=120), hami.log()
        hami.kill()
        hami.start()
        all_bound = releaser.wait_bound(30, timeout=240)
        assert releaser.error is None
        assert all_bound, f"only {len(releaser.bound)} of 30 bound\n{hami.log()}"
    pods = list_pods(api, namespace)
    assert len(pods) == 30
    assert all(p["spec"].get("nodeName") in nodes for p in pods)
    assert all(ALLOCATED in p["metadata"]["annotations"] for p in pods)
    assert_not_overcommitted(pods, nodes)
