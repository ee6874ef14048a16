"""The monitor over real HTTP on loopback: scrape /metrics, parse it as Prometheus does.

Region files are built from the contract's layout tables (``tests/unit/monitor/monitor_regions.py``)
in a temporary hook directory; pods come through the same watch cache the process uses, fed by an
in-memory list/watch source; device telemetry comes from the fake vendor's backend.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from hami_core_fw import config, models, plugins
from hami_core_fw.builtin import fake
from hami_core_fw.k8s import cache
from hami_core_fw.monitor import app, region

pytestmark = pytest.mark.integration


def _load_regions() -> Any:
    """The region file builder of the unit tests (one file, loaded by path, registered once)."""
    if "monitor_regions" in sys.modules:
        return sys.modules["monitor_regions"]
    path = Path(__file__).resolve().parents[2] / "unit" / "monitor" / "monitor_regions.py"
    spec = importlib.util.spec_from_file_location("monitor_regions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["monitor_regions"] = module
    spec.loader.exec_module(module)
    return module


regions = _load_regions()

UUID0 = "GPU-11111111-2222-3333-4444-555555555555"
MIB = 1 << 20
NODE = "node-a"


def pod_json(uid: str, name: str, containers=("main",), namespace: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid,
            "resourceVersion": "1",
            "labels": {"hami.io/vgpu-node": NODE},
        },
        "spec": {"nodeName": NODE, "containers": [{"name": c} for c in containers]},
    }


class MemorySource:
    """A list/watch source: LIST answers ``pods``; WATCH yields what tests push."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.selectors: list[str] = []

    async def list(self, path, *, label_selector="", field_selector=""):
        self.selectors.append(label_selector)
        return {"items": self.pods, "metadata": {"resourceVersion": "1"}}

    async def watch(
        self, path, *, resource_version, label_selector="", field_selector="", timeout_s=300
    ) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self.events.get()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_backend() -> fake.FakeBackend:
    cfg = config.FakeConfig(devices=(config.FakeDevice(uuid="fake-{node}-0", memory=8192),))
    return fake.FakeBackend(cfg, NODE)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        out.setdefault(fam.name, []).extend((dict(s.labels), s.value) for s in fam.samples)
    return out


def region_file(hook: Path, uid: str, container: str, used: int, **kw: Any) -> Path:
    data = regions.v1(
        uuids=[UUID0],
        limits=[1 << 30],
        procs=[regions.Proc(1, 0, used={0: (0, 0, used, used)}, sm_util={0: 25})],
        **kw,
    )
    return regions.write_container(hook, uid, container, data)


def run(coro_fn) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout=30))


def test_serve_scrapes_labelled_pods_and_device_telemetry(tmp_path, plugin_host):
    region_file(tmp_path, "uid-1", "main", 300 * MIB)
    region_file(tmp_path, "uid-9", "main", 5 * MIB)  # its pod is not on this node
    source = MemorySource([pod_json("uid-1", "p1")])
    port = free_port()
    options = app.MonitorOptions(
        node_name=NODE, hook_path=str(tmp_path), metrics_bind=f"127.0.0.1:{port}"
    )

    async def main() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            app.serve(
                config.Settings(),
                plugin_host,
                stop=stop,
                ready=ready,
                options=options,
                source=source,
                backends={"fake": fake_backend()},
            )
        )
        await asyncio.wait_for(ready.wait(), timeout=10)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            assert await get(session, base + "/healthz") == (200, "ok\n")
            assert await get(session, base + "/readyz") == (200, "ok\n")
            status, text = await get(session, base + "/metrics")
        assert status == 200
        got = parse(text)
        assert got["hami_vgpu_memory_used_bytes"] == [
            (
                {
                    "namespace": "ns",
                    "pod": "p1",
                    "container": "main",
                    "vdevice_index": "0",
                    "device_uuid": UUID0,
                    "zone": "vGPU",
                },
                300 * MIB,
            )
        ]
        assert got["hami_container_device_utilization_ratio"][0][1] == 25
        assert got["hami_host_gpu_memory_used_bytes"] == [
            (
                {
                    "node": NODE,
                    "device_index": "0",
                    "device_uuid": f"fake-{NODE}-0",
                    "device_type": "FAKE-GPU-16G",
                    "zone": "vGPU",
                },
                0.0,
            )
        ]
        assert source.selectors == [f"hami.io/vgpu-node={NODE}"]
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        # the listener is closed once serve returns
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await get(session, base + "/healthz")

    run(main)


async def serving(process: app.MonitorProcess, plugin_host: plugins.PluginHost):
    runner = web.AppRunner(app.build_app(config.Settings(), plugin_host, process=process))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def event(kind: str, uid: str, name: str, **kw: Any) -> cache.CacheEvent[models.PodView]:
    view = models.PodView.from_manifest(pod_json(uid, name, **kw))
    return cache.CacheEvent(cache.EventKind(kind), uid, view)


def heartbeat(path: Path) -> None:
    """What the shim does on a kernel launch: ``recent_kernel = 2``."""
    with path.open("r+b") as f:
        f.seek(2_008_904)
        f.write((2).to_bytes(4, "little"))


def test_pods_come_and_go_and_feedback_is_written(tmp_path, plugin_host):
    hi = region_file(tmp_path, "uid-hi", "main", 10 * MIB, priority=0, recent_kernel=2)
    lo = region_file(tmp_path, "uid-lo", "worker", 20 * MIB, priority=1, recent_kernel=2)
    options = app.MonitorOptions(
        node_name=NODE,
        hook_path=str(tmp_path),
        mig_apply_lock=str(tmp_path / "mig.lock"),
        proc_root=str(tmp_path / "no-proc"),
    )
    process = app.MonitorProcess(config.Settings(), plugin_host, options)

    async def main() -> None:
        runner, base = await serving(process, plugin_host)
        try:
            async with aiohttp.ClientSession() as session:
                assert await get(session, base + "/readyz") == (503, "pod cache not synced\n")
                process.on_pod(event("ADDED", "uid-hi", "high"))
                process.mark_pods_synced()
                assert (await get(session, base + "/readyz"))[0] == 503
                await asyncio.to_thread(process.tick)
                assert await get(session, base + "/readyz") == (200, "ok\n")
                got = parse((await get(session, base + "/metrics"))[1])
                pods = [s[0]["pod"] for s in got["hami_vgpu_memory_used_bytes"]]
                assert pods == ["high"]  # uid-lo's pod is unknown: not loaded yet
                # the high-priority container ran alone: its heartbeat aged, no throttling
                assert region.read_file(hi).recent_kernel == 1
                assert region.read_file(hi).utilization_switch == 0

                heartbeat(hi)  # the high-priority container launched again
                process.on_pod(event("ADDED", "uid-lo", "low", containers=("init", "worker")))
                assert process.wake.is_set()
                await asyncio.to_thread(process.tick)
                got = parse((await get(session, base + "/metrics"))[1])
                assert [
                    (s[0]["pod"], s[0]["container"], s[1])
                    for s in got["hami_vgpu_memory_used_bytes"]
                ] == [("high", "main", 10 * MIB), ("low", "worker", 20 * MIB)]
                # hi (priority 0) is still active on the same GPU: lo is blocked and throttled
                low = region.read_file(lo)
                assert (low.recent_kernel, low.utilization_switch) == (-1, 1)

                # MIG reconfiguration: feedback pauses, nothing is written
                (tmp_path / "mig.lock").write_text("")
                await asyncio.to_thread(process.tick)
                assert region.read_file(hi).recent_kernel == 1
                (tmp_path / "mig.lock").unlink()
                await asyncio.to_thread(process.tick)
                assert region.read_file(hi).recent_kernel == 0
                assert region.read_file(lo).recent_kernel == 0  # hi went idle: unblocked

                process.on_pod(event("DELETED", "uid-lo", "low"))
                got = parse((await get(session, base + "/metrics"))[1])
                assert [s[0]["pod"] for s in got["hami_vgpu_memory_used_bytes"]] == ["high"]
        finally:
            await runner.cleanup()
            await process.close()

    run(main)
