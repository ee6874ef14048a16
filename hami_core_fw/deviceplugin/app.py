"""One vendor's device plugin on one node: discovery, health, registration, kubelet server.

:func:`serve` wires the pieces together for any vendor:

* the vendor's :class:`~hami_core_fw.vendor.DeviceBackend` discovers devices (in a thread) and
  reports health changes (``poll_health`` in a thread, one wait at a time);
* :class:`~hami_core_fw.deviceplugin.register.Registrar` keeps the node annotation current and is
  woken at once when a device's health changes;
* :class:`~hami_core_fw.deviceplugin.server.DevicePluginServer` advertises ``count`` replicas
  ``<uuid>-<i>`` per device with its health (and NUMA node when the spec asks for it) and answers
  ``Allocate`` through :class:`~hami_core_fw.deviceplugin.allocate.Allocator`.

State is rebuilt on every start (nothing is persisted on the node).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from hami_core_fw import models
from hami_core_fw import vendor as hv
from hami_core_fw.deviceplugin import allocate, register, server
from hami_core_fw.deviceplugin import spec as dpspec
from hami_core_fw.k8s import api

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NodeAgentConfig:
    """Settings of one device plugin process.

    :param register_interval_s: registration pass period (HAMi 30 s)
    :param health_poll_s: longest single wait for health events (bounds shutdown time)
    :param watch_interval_s: how often the kubelet sockets are checked for a restart
    :param grace_s: time in-flight gRPC calls get when a server generation stops
    """

    node_name: str
    spec: dpspec.DevicePluginSpec
    kubelet_dir: str = server.DEFAULT_KUBELET_DIR
    kubelet_socket: str = server.KUBELET_SOCKET
    hook_path: str = "/usr/local"
    shim_library: str = "libvgpu.so"
    register_interval_s: float = 30.0
    register_error_interval_s: float = 5.0
    health_poll_s: float = 1.0
    watch_interval_s: float = 1.0
    grace_s: float = 2.0


class NodeDevices:
    """The discovered devices with health changes applied; thread-safe."""

    def __init__(self, backend: hv.DeviceBackend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self._health: dict[str, bool] = {}
        self._devices: tuple[models.DeviceInfo, ...] = ()

    def discover(self) -> tuple[models.DeviceInfo, ...]:
        """Re-read the devices from the backend (blocking) and apply known health changes."""
        found = self._backend.discover()
        with self._lock:
            self._devices = found
            return self._apply()

    def _apply(self) -> tuple[models.DeviceInfo, ...]:
        return tuple(
            dataclasses.replace(d, health=d.health and self._health.get(d.id, True))
            for d in self._devices
        )

    def set_health(self, changes: dict[str, bool]) -> bool:
        """Record health changes; returns whether any device's health changed."""
        with self._lock:
            before = self._apply()
            self._health.update(changes)
            return self._apply() != before

    @property
    def devices(self) -> tuple[models.DeviceInfo, ...]:
        """The last discovered devices with health applied."""
        with self._lock:
            return self._apply()


def kubelet_devices(
    devices: Sequence[models.DeviceInfo], *, numa: bool
) -> list[server.KubeletDevice]:
    """``count`` replicas per device, in discovery order."""
    out: list[server.KubeletDevice] = []
    for d in devices:
        out.extend(
            server.replicas(d.id, max(d.count, 1), healthy=d.health, numa=d.numa if numa else None)
        )
    return out


class NodeAgent:
    """Everything one vendor's device plugin runs on one node."""

    def __init__(
        self,
        cfg: NodeAgentConfig,
        vendor: hv.DeviceVendor,
        backend: hv.DeviceBackend,
        kube: api.Kube,
    ) -> None:
        self.cfg = cfg
        self.vendor = vendor
        self.backend = backend
        self.state = NodeDevices(backend)
        self.device_list = server.DeviceList()
        self.allocator = allocate.Allocator(
            kube,
            vendor,
            node_name=cfg.node_name,
            hook_path=cfg.hook_path,
            preferred_allocation=cfg.spec.preferred_allocation,
            shim_library=cfg.shim_library,
        )
        self.registrar = register.Registrar(
            kube,
            vendor,
            cfg.node_name,
            interval_s=cfg.register_interval_s,
            error_interval_s=cfg.register_error_interval_s,
        )
        self.server = server.DevicePluginServer(
            resource_name=vendor.resources.count,
            socket_name=cfg.spec.socket_name,
            devices=self.device_list,
            handler=self.allocator,
            options=server.PluginOptions(
                pre_start_required=cfg.spec.pre_start_required,
                get_preferred_allocation_available=cfg.spec.preferred_allocation,
            ),
            kubelet_dir=cfg.kubelet_dir,
            kubelet_socket=cfg.kubelet_socket,
            watch_interval_s=cfg.watch_interval_s,
            grace_s=cfg.grace_s,
        )
        self._wake = asyncio.Event()

    def _publish(self, devices: Sequence[models.DeviceInfo]) -> None:
        self.device_list.update(kubelet_devices(devices, numa=self.cfg.spec.numa_topology))

    def _discover(self) -> tuple[models.DeviceInfo, ...]:
        return self.state.discover()

    def _discover_and_publish(self) -> tuple[models.DeviceInfo, ...]:
        devices = self._discover()
        # DeviceList belongs to the event loop: hand the update over
        self._loop.call_soon_threadsafe(self._publish, devices)
        return devices

    async def _health(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                changes = await asyncio.to_thread(self.backend.poll_health, self.cfg.health_poll_s)
            except Exception:  # backend boundary: keep the plugin serving
                logger.exception("health polling failed; retrying")
                await _wait(stop, asyncio.Event(), timeout=self.cfg.health_poll_s)
                continue
            if changes and self.state.set_health(dict(changes)):
                for uuid, healthy in changes.items():
                    logger.warning(
                        "device %s is now %s", uuid, "healthy" if healthy else "unhealthy"
                    )
                self._publish(self.state.devices)
                self._wake.set()

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Serve until ``stop``; ``ready`` is set once registered with the kubelet and the node."""
        self._loop = asyncio.get_running_loop()
        initial = await asyncio.to_thread(self._discover)
        self._publish(initial)
        logger.info(
            "node %s: %d %s device(s): %s",
            self.cfg.node_name,
            len(initial),
            self.vendor.common_word,
            ", ".join(d.id for d in initial),
        )
        tasks = [
            asyncio.ensure_future(self.server.run(stop)),
            asyncio.ensure_future(self.registrar.run(self._discover_and_publish, stop, self._wake)),
            asyncio.ensure_future(self._health(stop)),
        ]
        readiness = asyncio.ensure_future(self._ready(ready))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                exc = t.exception()
                if exc is not None:
                    raise exc
        finally:
            stop.set()
            readiness.cancel()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            self.backend.close()

    async def _ready(self, ready: asyncio.Event | None) -> None:
        if ready is None:
            return
        await self.server.registered.wait()
        await self.registrar.synced.wait()
        ready.set()


async def _wait(stop: asyncio.Event, other: asyncio.Event, *, timeout: float | None = None) -> None:
    ta, tb = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(other.wait())
    try:
        await asyncio.wait({ta, tb}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ta.cancel()
        tb.cancel()
