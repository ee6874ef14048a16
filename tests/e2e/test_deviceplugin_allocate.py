"""Allocator and Registrar (vendor-neutral, fake vendor) against a REAL kube-apiserver.

Concurrent ``Allocate`` calls are serialised and each sees the previous one's patch; the
registration loop writes the node annotation only when it changed and answers the handshake;
HAMi v2.10 strings with fewer entries than containers (Q1) map to the right container.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from harness import ControlPlane, Json, request_json
from kubernetes import client as k8s

from hami_core_fw import codec, models
from hami_core_fw.builtin import fake
from hami_core_fw.deviceplugin import allocate, register
from hami_core_fw.k8s import api as kapi

pytestmark = pytest.mark.controlplane

TO_ALLOCATE = fake.KEYS.to_allocate
COUNT = "hami.io/fake-gpu"


def run(fn: Callable[[kapi.Kube], Coroutine[Any, Any, None]], cp: ControlPlane) -> None:
    async def main() -> None:
        kube = await kapi.Kube.connect(str(cp.kubeconfig))
        try:
            await asyncio.wait_for(fn(kube), 60)
        finally:
            await kube.close()

    asyncio.run(main())


def make_pod(
    client: k8s.ApiClient, namespace: str, node: str, name: str, value: str, containers: list[Json]
) -> Json:
    now = str(int(dt.datetime.now(dt.UTC).timestamp()))
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": {
                TO_ALLOCATE: value,
                fake.KEYS.allocated: value,
                "hami.io/vgpu-node": node,
                "hami.io/bind-phase": "allocating",
                "hami.io/bind-time": now,
            },
        },
        "spec": {"schedulerName": "nobody", "nodeName": node, "containers": containers},
    }
    return request_json(client, "POST", f"/api/v1/namespaces/{namespace}/pods", body)


def ctr(name: str, count: int | None) -> Json:
    limits = {COUNT: str(count)} if count else {}
    return {"name": name, "image": "busybox", "resources": {"limits": limits}}


def test_concurrent_allocate_is_serialised(
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    namespace: str,
    fake_node: Callable[..., Json],
    tmp_path: Path,
) -> None:
    node = fake_node()["metadata"]["name"]
    value = "GPU-a,FAKE,100,0:;GPU-b,FAKE,200,0:;GPU-c,FAKE,300,0:;"
    make_pod(api, namespace, node, "p", value, [ctr("a", 1), ctr("b", 1), ctr("c", 1)])

    async def scenario(kube: kapi.Kube) -> None:
        allocator = allocate.Allocator(
            kube, fake.FakeVendor(), node_name=node, hook_path=str(tmp_path)
        )
        results = await asyncio.gather(*(allocator.allocate([[f"x-{i}"]]) for i in range(3)))
        visible = sorted(r[0].envs[fake.VISIBLE_ENV] for r in results)
        # every container entry was served exactly once: no two calls read the same state
        assert visible == ["GPU-a", "GPU-b", "GPU-c"]
        pod = await kube.get_pod(namespace, "p")
        ann = pod["metadata"]["annotations"]
        assert ann[TO_ALLOCATE] == ";;;"
        assert ann["hami.io/bind-phase"] == "success"
        dirs = sorted(p.name for p in (tmp_path / "vgpu" / "containers").iterdir())
        uid = pod["metadata"]["uid"]
        assert dirs == [f"{uid}_a", f"{uid}_b", f"{uid}_c"]
        assert len(allocator.durations) == 3

    run(scenario, control_plane)


def test_hami_v210_short_strings_map_to_the_using_container(
    control_plane: ControlPlane,
    api: k8s.ApiClient,
    namespace: str,
    fake_node: Callable[..., Json],
    tmp_path: Path,
) -> None:
    """Q1: HAMi v2.10 omits the entry of a non-GPU sidecar placed before the GPU container."""
    node = fake_node()["metadata"]["name"]
    pod = make_pod(
        api, namespace, node, "q1", "GPU-a,FAKE,100,0:;", [ctr("sidecar", None), ctr("gpu", 1)]
    )

    async def scenario(kube: kapi.Kube) -> None:
        allocator = allocate.Allocator(
            kube, fake.FakeVendor(), node_name=node, hook_path=str(tmp_path)
        )
        (runtime,) = await allocator.allocate([["x-0"]])
        host = {m.container_path: m.host_path for m in runtime.mounts}[f"{tmp_path}/vgpu"]
        assert host.endswith(f"{pod['metadata']['uid']}_gpu")

    run(scenario, control_plane)


def test_registration_written_only_when_changed_and_handshake_answered(
    control_plane: ControlPlane, api: k8s.ApiClient, fake_node: Callable[..., Json]
) -> None:
    node = fake_node()["metadata"]["name"]
    dev = models.DeviceInfo("GPU-r", 10, 1024, 100, "FAKE-GPU", vendor="FAKE")
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    vendor = fake.FakeVendor()
    vendor.keys = dataclasses.replace(fake.KEYS, handshake="hami.io/node-handshake-fake")

    async def scenario(kube: kapi.Kube) -> None:
        reg = register.Registrar(kube, vendor, node, now=lambda: now)
        assert await reg.sync([dev]) is True
        rv = (await kube.get_node(node))["metadata"]["resourceVersion"]
        assert await reg.sync([dev]) is False  # unchanged: no write
        assert (await kube.get_node(node))["metadata"]["resourceVersion"] == rv
        # the scheduler asks; the plugin answers in its next pass
        await kube.patch_node_annotations(
            node, {"hami.io/node-handshake-fake": "Requesting_2026-01-02 03:00:00"}
        )
        assert await reg.sync([dev]) is True
        ann = (await kube.get_node(node))["metadata"]["annotations"]
        assert ann["hami.io/node-handshake-fake"] == "Reported 2026-01-02 03:04:05"
        assert codec.decode_registration(fake.KEYS.register, ann[fake.KEYS.register]) == (dev,)
        # somebody removed the registration: it is written again
        await kube.patch_node_annotations(node, {fake.KEYS.register: None})
        assert await reg.sync([dev]) is True
        assert reg.writes == 3

    run(scenario, control_plane)
