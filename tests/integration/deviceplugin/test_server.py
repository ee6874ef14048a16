"""DevicePluginServer against the kubelet stand-in, over real unix sockets (no API server).

Covers the kubelet-facing lifecycle (k8s-protocols.md 2.3-2.5): register after serving, replicas
with health and NUMA, complete lists on every change, re-registration after a kubelet restart and
after our socket is deleted, stream loss, preferred allocation, Allocate errors reaching the
kubelet, graceful stop.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from hami_core_fw import errors, models
from hami_core_fw.deviceplugin import server
from hami_core_fw.testing.kubelet import AdmissionError, FakeKubelet

pytestmark = pytest.mark.integration

RESOURCE = "example.com/gpu"


class Handler:
    def __init__(self) -> None:
        self.calls: list[list[list[str]]] = []
        self.fail: str = ""

    async def allocate(self, requests: Sequence[Sequence[str]]) -> list[models.ContainerRuntime]:
        self.calls.append([list(r) for r in requests])
        if self.fail:
            raise errors.PermanentError(self.fail)
        return [
            models.ContainerRuntime(
                envs={"IDS": ",".join(r)},
                mounts=(models.Mount("/in", "/host", read_only=True),),
                devices=(models.DeviceSpec("/dev/x", "/dev/x", "rw"),),
            )
            for r in requests
        ]

    async def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        # prefer the highest ids: visibly different from the kubelet's own first-n choice
        rest = [i for i in reversed(available) if i not in must_include]
        return [*must_include, *rest][:size]

    async def pre_start(self, device_ids: Sequence[str]) -> None:
        return None


def short_dir() -> Path:
    # unix socket paths must stay below ~107 bytes: pytest's tmp_path is too deep
    return Path(tempfile.mkdtemp(prefix="dp-", dir="/tmp"))


@asynccontextmanager
async def running(
    devices: server.DeviceList,
    handler: Handler,
    *,
    options: server.PluginOptions | None = None,
    directory: Path | None = None,
) -> AsyncIterator[tuple[FakeKubelet, server.DevicePluginServer, asyncio.Event]]:
    d = directory or short_dir()
    kubelet = FakeKubelet(d)
    await kubelet.start()
    srv = server.DevicePluginServer(
        resource_name=RESOURCE,
        socket_name="example-gpu.sock",
        devices=devices,
        handler=handler,
        options=options or server.PluginOptions(),
        kubelet_dir=d,
        watch_interval_s=0.02,
        grace_s=0.5,
    )
    stop = asyncio.Event()
    task = asyncio.ensure_future(srv.run(stop))
    try:
        yield kubelet, srv, stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await kubelet.stop()


def run(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(fn(), 60))


def test_replicas_health_numa_and_updates() -> None:
    async def scenario() -> None:
        devs = server.DeviceList(
            server.replicas("GPU-a", 3, healthy=True, numa=1)
            + server.replicas("GPU-b", 3, healthy=True, numa=None)
        )
        async with running(devs, Handler()) as (kubelet, srv, _):
            res = await kubelet.wait_registered(RESOURCE)
            assert res.endpoint == "example-gpu.sock"
            assert sorted(res.devices) == [f"GPU-{g}-{i}" for g in "ab" for i in range(3)]
            assert [n.ID for n in res.devices["GPU-a-0"].topology.nodes] == [1]
            assert not res.devices["GPU-b-0"].HasField("topology")
            assert (res.capacity, res.allocatable) == (6, 6)
            # a health change re-sends the COMPLETE list
            devs.update(
                server.replicas("GPU-a", 3, healthy=False, numa=1)
                + server.replicas("GPU-b", 3, healthy=True, numa=None)
            )
            got = await kubelet.wait_devices(RESOURCE, lambda d: d["GPU-a-0"].health == "Unhealthy")
            assert len(got) == 6
            assert {d.health for i, d in got.items() if i.startswith("GPU-b")} == {"Healthy"}
            assert (res.capacity, res.allocatable) == (6, 3)
            # an unchanged list is not re-sent
            lists = res.lists
            assert devs.update(list(devs.devices)) is False
            assert res.lists == lists
            assert srv.registrations == 1

    run(scenario)


def test_kubelet_restart_triggers_reregistration() -> None:
    async def scenario() -> None:
        devs = server.DeviceList(server.replicas("GPU-a", 2, healthy=True, numa=None))
        async with running(devs, Handler()) as (kubelet, srv, _):
            await kubelet.wait_registered(RESOURCE)
            await kubelet.restart()
            # the restarted kubelet knows the resource with zero devices until re-registration
            assert kubelet.resources[RESOURCE].allocatable == 0
            res = await kubelet.wait_registered(RESOURCE, registrations=2)
            assert sorted(res.devices) == ["GPU-a-0", "GPU-a-1"]
            assert srv.registrations == 2
            assert (srv.kubelet_dir / "example-gpu.sock").is_socket()

    run(scenario)


def test_deleted_socket_triggers_reregistration() -> None:
    async def scenario() -> None:
        devs = server.DeviceList(server.replicas("GPU-a", 1, healthy=True, numa=None))
        async with running(devs, Handler()) as (kubelet, srv, _):
            await kubelet.wait_registered(RESOURCE)
            srv.socket_path.unlink()
            res = await kubelet.wait_registered(RESOURCE, registrations=2)
            assert srv.socket_path.is_socket()
            adm = await kubelet.admit_container(RESOURCE, 1)
            assert adm.response.envs["IDS"] == "GPU-a-0"
            assert res.connected

    run(scenario)


def test_stale_socket_file_is_replaced_and_kubelet_started_late() -> None:
    async def scenario() -> None:
        d = short_dir()
        (d / "example-gpu.sock").write_text("stale")
        devs = server.DeviceList(server.replicas("GPU-a", 1, healthy=True, numa=None))
        srv = server.DevicePluginServer(
            resource_name=RESOURCE,
            socket_name="example-gpu.sock",
            devices=devs,
            handler=Handler(),
            kubelet_dir=d,
            watch_interval_s=0.02,
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(srv.run(stop))
        # no kubelet yet: the plugin keeps retrying; the kubelet then appears
        kubelet = FakeKubelet(d)
        # FakeKubelet.start wipes sockets, like the kubelet: our plugin must come back by itself
        await kubelet.start()
        try:
            res = await kubelet.wait_registered(RESOURCE)
            assert list(res.devices) == ["GPU-a-0"]
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await kubelet.stop()
        assert not (d / "example-gpu.sock").exists(), "graceful stop removes our socket"

    run(scenario)


def test_stream_loss_makes_devices_unallocatable() -> None:
    async def scenario() -> None:
        devs = server.DeviceList(server.replicas("GPU-a", 2, healthy=True, numa=None))
        async with running(devs, Handler()) as (kubelet, _srv, _):
            res = await kubelet.wait_registered(RESOURCE)
            await kubelet.lose_stream(RESOURCE)
            assert (res.capacity, res.allocatable) == (2, 0)
            with pytest.raises(AdmissionError):
                await kubelet.admit_container(RESOURCE, 1)

    run(scenario)


def test_allocate_preferred_and_errors() -> None:
    async def scenario() -> None:
        handler = Handler()
        devs = server.DeviceList(server.replicas("GPU-a", 4, healthy=True, numa=None))
        options = server.PluginOptions(get_preferred_allocation_available=True)
        async with running(devs, handler, options=options) as (kubelet, _srv, _):
            res = await kubelet.wait_registered(RESOURCE)
            assert res.options.get_preferred_allocation_available
            adm = await kubelet.admit_container(RESOURCE, 2)
            # the kubelet followed the plugin's preference
            assert adm.preferred == ("GPU-a-3", "GPU-a-2")
            assert adm.device_ids == ("GPU-a-3", "GPU-a-2")
            assert adm.response.envs["IDS"] == "GPU-a-3,GPU-a-2"
            assert [(m.container_path, m.host_path, m.read_only) for m in adm.response.mounts] == [
                ("/in", "/host", True)
            ]
            assert adm.response.devices[0].permissions == "rw"
            # one container request per Allocate call, as the kubelet does
            assert handler.calls == [[["GPU-a-3", "GPU-a-2"]]]
            handler.fail = "device number not matched"
            with pytest.raises(AdmissionError, match="device number not matched"):
                await kubelet.admit_container(RESOURCE, 1)

    run(scenario)


def test_registration_refused_for_invalid_resource_name() -> None:
    async def scenario() -> None:
        d = short_dir()
        kubelet = FakeKubelet(d)
        await kubelet.start()
        srv = server.DevicePluginServer(
            resource_name="kubernetes.io/gpu",
            socket_name="bad.sock",
            devices=server.DeviceList(),
            handler=Handler(),
            kubelet_dir=d,
            watch_interval_s=0.02,
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(srv.run(stop))
        try:
            await kubelet.wait_for(lambda k: bool(k.refused), what="a refused registration")
            assert "invalid extended resource name" in kubelet.refused[0]
            assert srv.registrations == 0
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await kubelet.stop()

    run(scenario)


def test_physical_id() -> None:
    assert server.physical_id("GPU-8f3a89c6-0000-4000-8000-000000000001-7") == (
        "GPU-8f3a89c6-0000-4000-8000-000000000001"
    )
    assert server.physical_id("GPU-x::3") == "GPU-x"
    assert server.physical_id("MIG-abc") == "MIG-abc"
