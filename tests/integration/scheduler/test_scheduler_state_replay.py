"""Replaying a watch stream into the scheduler's cluster state.

Node and pod caches (:mod:`hami_core_fw.k8s.cache`) run on scripted LIST/WATCH sources and feed a
:class:`~hami_core_fw.scheduler.cluster.Cluster`, exactly as ``hami scheduler`` wires them. After
**every** event the incrementally kept state is compared with a state computed from scratch out of
the caches' current contents; the script covers adds, updates (phase changes, init containers
finishing, deletionTimestamp), deletes, an allocation that does not decode, node re-registration
and a 410 re-list with synthetic deletes.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from hami_core_fw import models, plugins
from hami_core_fw.k8s import api, cache
from hami_core_fw.scheduler import cluster

pytestmark = pytest.mark.integration

GONE = object()
REGISTER = "hami.io/node-fake-register"
GPU, MEM, CORES = "hami.io/fake-gpu", "hami.io/fake-gpumem", "hami.io/fake-gpucores"


class Script:
    def __init__(self, *lists: list[dict[str, Any]]) -> None:
        self.lists = collections.deque(lists)
        self.events: asyncio.Queue[object] = asyncio.Queue()

    async def list(
        self, path: str, *, label_selector: str = "", field_selector: str = ""
    ) -> api.Json:
        items = self.lists.popleft()
        return {"metadata": {"resourceVersion": "1"}, "items": items}

    async def watch(
        self,
        path: str,
        *,
        resource_version: str,
        label_selector: str = "",
        field_selector: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[api.Json]:
        while True:
            item = await self.events.get()
            if item is GONE:
                raise api.Gone("expired", status=410)
            assert isinstance(item, dict)
            yield item


_rv = iter(range(100, 100000))


def node(name: str, n_devices: int, mem: int = 16384) -> dict[str, Any]:
    devices = [
        {"id": f"{name}-d{i}", "index": i, "count": 10, "devmem": mem, "devcore": 100,
         "type": "FAKE-GPU", "health": True}
        for i in range(n_devices)
    ]  # fmt: skip
    return {
        "metadata": {
            "name": name,
            "resourceVersion": str(next(_rv)),
            "annotations": {REGISTER: json.dumps(devices)},
        },
        "status": {"allocatable": {GPU: str(10 * n_devices)}},
    }


def pod(
    name: str,
    entries: list[list[tuple[str, int, int]]] | None = None,
    *,
    node_name: str = "",
    init: int = 0,
    phase: str = "Running",
    init_done: bool = False,
    deleting: bool = False,
    raw_allocation: str | None = None,
) -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if entries is not None:
        value = "".join(
            "".join(f"{u},FAKE,{m},{c}:" for u, m, c in entry) + ";" for entry in entries
        )
        annotations = {"hami.io/vgpu-node": node_name, "hami.io/fake-devices-allocated": value}
    if raw_allocation is not None:
        annotations = {
            "hami.io/vgpu-node": node_name,
            "hami.io/fake-devices-allocated": raw_allocation,
        }
    n = len(entries or [[]])
    containers = [{"name": f"c{i}", "resources": {"limits": {GPU: "1"}}} for i in range(n)]
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{name}",
        "resourceVersion": str(next(_rv)),
        "annotations": annotations,
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if init_done:
        status["initContainerStatuses"] = [
            {"name": f"c{i}", "state": {"terminated": {"exitCode": 0}}} for i in range(init)
        ]
    return {
        "metadata": meta,
        "spec": {
            "nodeName": node_name,
            "initContainers": containers[:init],
            "containers": containers[init:],
        },
        "status": status,
    }


def ev(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def from_scratch(
    host: plugins.PluginHost,
    nodes: cache.WatchCache[models.NodeView],
    pods: cache.WatchCache[models.PodView],
) -> cluster.Cluster:
    fresh = cluster.Cluster(host)
    for name, view in nodes.items().items():
        fresh.on_node(cache.CacheEvent(cache.EventKind.ADDED, name, view))
    for uid, view in pods.items().items():
        fresh.on_pod(cache.CacheEvent(cache.EventKind.ADDED, uid, view))
    return fresh


def usage(cl: cluster.Cluster, node_name: str) -> dict[str, tuple[int, int, int]]:
    return {d.id: (d.used, d.usedmem, d.usedcores) for d in cl.state.usage(node_name)}


def test_incremental_state_equals_a_rebuild_after_every_event(
    plugin_host: plugins.PluginHost,
) -> None:
    host = plugin_host
    node_script = Script([node("n1", 2), node("n2", 1)], [node("n1", 2), node("n2", 1)])
    pod_script = Script(
        [pod("p1", [[("n1-d0", 2000, 20)]], node_name="n1"), pod("plain")],
        # after the 410: p1 and p3 are gone, p4 is unchanged-but-new-rv, p6 appeared
    )
    incremental = cluster.Cluster(host)
    mismatches: list[str] = []
    steps = 0
    changed = asyncio.Event()

    async def main() -> None:
        nonlocal steps
        nodes = cache.node_cache(node_script, handler=incremental.on_node)
        pods = cache.pod_cache(pod_script, handler=incremental.on_pod)

        def check(event: cache.CacheEvent[Any]) -> None:
            nonlocal steps
            steps += 1
            if nodes.synced.is_set() and pods.synced.is_set():
                scratch = from_scratch(host, nodes, pods)
                if scratch.state.fingerprint() != incremental.state.fingerprint():
                    mismatches.append(
                        f"after {event.kind} {event.key} (synthetic={event.synthetic})"
                    )
            changed.set()

        nodes.add_handler(check)
        pods.add_handler(check)
        tasks = [asyncio.create_task(nodes.run())]
        await nodes.synced.wait()
        tasks.append(asyncio.create_task(pods.run()))
        await pods.synced.wait()

        async def step(script: Script, item: object) -> None:
            before = steps
            await script.events.put(item)
            while steps == before:
                changed.clear()
                await changed.wait()

        assert usage(incremental, "n1")["n1-d0"] == (1, 2000, 20)
        await step(pod_script, ev("ADDED", pod("p3", [[("n2-d0", 3000, 30)]], node_name="n2")))
        assert usage(incremental, "n2")["n2-d0"] == (1, 3000, 30)
        # init container 4000 MiB then app container 1000 MiB on the same device: peak 4000
        p4 = [[("n1-d1", 4000, 10)], [("n1-d1", 1000, 50)]]
        await step(pod_script, ev("ADDED", pod("p4", p4, node_name="n1", init=1, phase="Pending")))
        assert usage(incremental, "n1")["n1-d1"] == (1, 4000, 50)
        await step(
            pod_script, ev("MODIFIED", pod("p4", p4, node_name="n1", init=1, init_done=True))
        )
        assert usage(incremental, "n1")["n1-d1"] == (1, 1000, 50)
        await step(
            pod_script,
            ev("MODIFIED", pod("p3", [[("n2-d0", 3000, 30)]], node_name="n2", deleting=True)),
        )
        assert usage(incremental, "n2")["n2-d0"] == (1, 3000, 30)  # kept while terminating (Q29)
        await step(
            pod_script,
            ev("DELETED", pod("p3", [[("n2-d0", 3000, 30)]], node_name="n2", deleting=True)),
        )
        assert usage(incremental, "n2")["n2-d0"] == (0, 0, 0)
        await step(
            pod_script, ev("ADDED", pod("p5", node_name="n2", raw_allocation="n2-d0,FAKE,x,y:;"))
        )
        assert incremental.undecodable.keys() == {"uid-p5"}
        assert usage(incremental, "n2")["n2-d0"] == (0, 0, 0)
        await step(
            pod_script,
            ev("MODIFIED", pod("p1", [[("n1-d0", 2000, 20)]], node_name="n1", phase="Succeeded")),
        )
        assert usage(incremental, "n1")["n1-d0"] == (0, 0, 0)
        # n1 re-registers with one device only: p4's device n1-d1 is gone from the node
        await step(node_script, ev("MODIFIED", node("n1", 1)))
        assert set(usage(incremental, "n1")) == {"n1-d0"}
        await step(node_script, ev("MODIFIED", node("n1", 2)))
        assert usage(incremental, "n1")["n1-d1"] == (1, 1000, 50)  # p4's usage re-applied
        await step(
            pod_script,
            ev("ADDED", pod("p7", [[("n1-d0", 500, 5), ("n1-d1", 500, 5)]], node_name="n1")),
        )
        # 410: the re-list no longer has p1, p5, p7 and plain; p4 is there again; p6 is new
        pod_script.lists.append(
            [
                pod("p4", p4, node_name="n1", init=1, init_done=True),
                pod("p6", [[("n2-d0", 8000, 100)]], node_name="n2"),
            ]
        )
        before = steps
        await pod_script.events.put(GONE)
        while steps < before + 6:  # 4 synthetic deletes, p4 modified, p6 added
            changed.clear()
            await changed.wait()
        assert usage(incremental, "n2")["n2-d0"] == (1, 8000, 100)
        assert usage(incremental, "n1") == {"n1-d0": (0, 0, 0), "n1-d1": (1, 1000, 50)}
        await step(node_script, ev("DELETED", node("n2", 1)))
        assert incremental.state.node_names() == ["n1"]
        for task in tasks:
            task.cancel()

    asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert steps >= 20
    assert mismatches == []
