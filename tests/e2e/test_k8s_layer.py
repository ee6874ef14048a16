"""hami_core_fw.k8s against a REAL kube-apiserver: binding with annotations, the node lock, watch.

These are the API interactions the extender's /bind and the device plugin's Allocate rely on; they
run against the etcd + kube-apiserver of the e2e harness, never a mock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from harness import ControlPlane, Json, request_json
from kubernetes import client as k8s

from hami_core_fw import codec, errors
from hami_core_fw.k8s import api as kapi
from hami_core_fw.k8s import lock

pytestmark = pytest.mark.controlplane
T = TypeVar("T")


def run(control_plane: ControlPlane, fn: Callable[[kapi.Kube], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        kube = await kapi.Kube.connect(str(control_plane.kubeconfig))
        try:
            return await fn(kube)
        finally:
            await kube.close()

    return asyncio.run(main())


def make_pod(client: k8s.ApiClient, namespace: str, name: str) -> Json:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "schedulerName": "nobody",  # no scheduler picks it up: the test binds it
            "containers": [{"name": "c", "image": "busybox"}],
        },
    }
    return request_json(client, "POST", f"/api/v1/namespaces/{namespace}/pods", body)


def test_bind_with_annotations_is_one_write(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, fake_node: Callable[..., Json]
) -> None:
    node = fake_node(extended_resources={"nvidia.com/gpu": 10})["metadata"]["name"]
    pod = make_pod(api, namespace, "p1")
    uid = pod["metadata"]["uid"]
    alloc = {"hami.io/vgpu-devices-allocated": "GPU-a,NVIDIA,3000,30:;", "hami.io/vgpu-node": node}

    async def bind(kube: kapi.Kube) -> Json:
        await kube.bind_pod(namespace, "p1", uid, node, annotations=alloc)
        # a retried bind to the same node is a success, not an error
        await kube.bind_pod(namespace, "p1", uid, node, annotations=alloc)
        return await kube.get_pod(namespace, "p1")

    bound = run(control_plane, bind)
    assert bound["spec"]["nodeName"] == node
    for key, value in alloc.items():
        assert bound["metadata"]["annotations"][key] == value


def test_bind_refuses_a_recreated_pod(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, fake_node: Callable[..., Json]
) -> None:
    node = fake_node()["metadata"]["name"]
    make_pod(api, namespace, "p2")

    async def bind(kube: kapi.Kube) -> None:
        await kube.bind_pod(namespace, "p2", "00000000-0000-0000-0000-000000000000", node)

    with pytest.raises(kapi.Conflict):
        run(control_plane, bind)


def test_node_lock_protocol(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, fake_node: Callable[..., Json]
) -> None:
    node = fake_node()["metadata"]["name"]
    make_pod(api, namespace, "owner")
    make_pod(api, namespace, "other")
    key = "hami.io/mutex.lock"

    async def scenario(kube: kapi.Kube) -> dict[str, object]:
        seen: dict[str, object] = {}
        await lock.acquire_node_lock(kube, node, namespace, "owner")
        seen["value"] = (await kube.get_node(node))["metadata"]["annotations"][key]
        await lock.acquire_node_lock(kube, node, namespace, "owner")  # same owner: acquired
        try:
            await lock.acquire_node_lock(kube, node, namespace, "other")
        except lock.LockContended as err:
            seen["contended"] = str(err)
        # another pod's release leaves the lock in place
        seen["foreign_release"] = await lock.release_node_lock(kube, node, namespace, "other")
        seen["still"] = (await kube.get_node(node))["metadata"]["annotations"].get(key)
        seen["release"] = await lock.release_node_lock(kube, node, namespace, "owner")
        seen["after"] = (await kube.get_node(node))["metadata"].get("annotations", {}).get(key)
        return seen

    seen = run(control_plane, scenario)
    parsed = codec.decode_node_lock(key, str(seen["value"]))
    assert (parsed.namespace, parsed.name) == (namespace, "owner")
    assert f"locked by {namespace}/owner" in str(seen["contended"])
    assert seen["foreign_release"] is False
    assert seen["still"] == seen["value"]
    assert seen["release"] is True
    assert seen["after"] is None


def test_node_lock_takeover_rules(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, fake_node: Callable[..., Json]
) -> None:
    key = "hami.io/mutex.lock"
    fresh = codec.format_rfc3339(dt.datetime.now(dt.UTC))
    stale = codec.format_rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=6))
    expired = fake_node(annotations={key: f"{stale},{namespace},someone"})["metadata"]["name"]
    orphan = fake_node(annotations={key: f"{fresh},{namespace},vanished"})["metadata"]["name"]
    legacy = fake_node(annotations={key: fresh})["metadata"]["name"]
    broken = fake_node(annotations={key: "not-a-time,a,b"})["metadata"]["name"]

    async def scenario(kube: kapi.Kube) -> dict[str, str]:
        out: dict[str, str] = {}
        for node in (expired, orphan):
            await lock.acquire_node_lock(kube, node, namespace, "me")
            out[node] = (await kube.get_node(node))["metadata"]["annotations"][key]
        for node in (legacy, broken):
            try:
                await lock.acquire_node_lock(kube, node, namespace, "me")
            except (lock.LockContended, errors.CodecError) as err:
                out[node] = type(err).__name__
        try:
            await lock.acquire_node_lock(kube, "no-such-node", namespace, "me")
        except kapi.NotFound:
            out["missing"] = "NotFound"
        return out

    out = run(control_plane, scenario)
    assert out[expired].endswith(f",{namespace},me")
    assert out[orphan].endswith(f",{namespace},me")
    assert out[legacy] == "LockContended"
    assert out[broken] == "CodecError"
    assert out["missing"] == "NotFound"


def test_concurrent_acquire_has_one_winner(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str, fake_node: Callable[..., Json]
) -> None:
    node = fake_node()["metadata"]["name"]
    for i in range(6):
        make_pod(api, namespace, f"racer-{i}")

    async def race(kube: kapi.Kube) -> list[str]:
        async def one(i: int) -> str:
            try:
                await lock.acquire_node_lock(kube, node, namespace, f"racer-{i}")
            except lock.LockContended:
                return "lost"
            return "won"

        return list(await asyncio.gather(*(one(i) for i in range(6))))

    results = run(control_plane, race)
    assert results.count("won") == 1


def test_watch_from_a_listed_resource_version(
    control_plane: ControlPlane, api: k8s.ApiClient, namespace: str
) -> None:
    async def scenario(kube: kapi.Kube) -> list[str]:
        listing = await kube.list(f"/api/v1/namespaces/{namespace}/pods")
        rv = listing["metadata"]["resourceVersion"]
        make_pod(api, namespace, "watched")
        kinds = []
        async for event in kube.watch(
            f"/api/v1/namespaces/{namespace}/pods", resource_version=rv, timeout_s=5
        ):
            kinds.append(f"{event['type']} {event['object']['metadata'].get('name', '')}")
            if event["type"] == "ADDED":
                break
        return kinds

    assert "ADDED watched" in run(control_plane, scenario)
